-- Placeholder: 009 is reserved for issue 22's pause/resume migration, which
-- is written on another branch. tern needs contiguous numbers, so until that
-- branch is merged this no-op keeps 010 loadable; the merge replaces this
-- file with the real 009.
SELECT 1;
