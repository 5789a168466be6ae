// Command doccheck fails when the repository points at something it does
// not contain. Run from the repository root (make doc-check does):
//
//	cd tools && GOWORK=off go run ./cmd/doccheck -C ..
//
// It reads every file git tracks (generated code included: gen/ carries the
// proto comments) and reports, as file:line: message,
//
//   - a relative Markdown link, in a tracked *.md file, whose file is not
//     tracked (a directory counts when it holds tracked files), or whose
//     #anchor is not the GitHub slug of a heading of the target;
//   - a mention of a *.md path, in any tracked text file, that names no
//     tracked file (relative to the file's directory, the repository root,
//     or the tail of any tracked path), and a mention with an #anchor whose
//     heading does not exist;
//   - a citation in the form `docs/x.md, "Heading"` whose heading does not
//     exist in that file (compared by slug, so case and backticks do not
//     matter; comment markers between wrapped lines are ignored);
//   - a citation of a place outside the repository: a path through the
//     sibling reference directory outside the repository, a numbered section sign (the sign
//     followed by a digit or a capital letter), or a "spec" file.
//
// Links with a scheme (https:, mailto:) and links inside fenced code blocks
// or code spans are not checked. This directory is not checked either: its
// tests are made of bad references.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path"
	"regexp"
	"sort"
	"strings"
	"unicode"
)

func main() {
	dir := flag.String("C", ".", "repository root")
	flag.Parse()
	out, err := exec.Command("git", "-C", *dir, "ls-files", "-z").Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "doccheck: git ls-files: %v\n", err)
		os.Exit(2)
	}
	files := map[string][]byte{}
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		if name == "" || strings.HasPrefix(name, selfDir) {
			continue
		}
		b, err := os.ReadFile(path.Join(*dir, name))
		if err != nil {
			// Tracked but deleted in the work tree: it is not there to cite.
			continue
		}
		files[name] = b
	}
	problems := Check(files)
	for _, p := range problems {
		fmt.Println(p)
	}
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "doccheck: %d reference(s) to something the repository does not contain\n", len(problems))
		os.Exit(1)
	}
}

// selfDir is where this command lives.
const selfDir = "tools/cmd/doccheck/"

// Problem is one bad reference.
type Problem struct {
	File string
	Line int
	Msg  string
}

func (p Problem) String() string { return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg) }

// repo is the set of tracked files and what is known about their headings.
type repo struct {
	files   map[string][]byte
	dirs    map[string]bool
	anchors map[string]map[string]bool // *.md file → slugs of its headings
}

// Check runs every check over the tracked files (path → content) and
// returns the problems sorted by file and line.
func Check(files map[string][]byte) []Problem {
	r := &repo{files: files, dirs: map[string]bool{"": true}, anchors: map[string]map[string]bool{}}
	for name := range files {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			r.dirs[d] = true
		}
	}
	var out []Problem
	for name, b := range files {
		if bytes.IndexByte(b, 0) >= 0 {
			continue // binary
		}
		linkLines := map[int]bool{}
		if strings.HasSuffix(name, ".md") {
			for _, p := range r.checkMarkdownLinks(name, b) {
				linkLines[p.Line] = true
				out = append(out, p)
			}
		}
		for _, p := range r.checkMentions(name, b) {
			if !linkLines[p.Line] { // the link's own report says it
				out = append(out, p)
			}
		}
		out = append(out, r.checkCitations(name, b)...)
		out = append(out, checkOutside(name, b)...)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].File != out[j].File {
			return out[i].File < out[j].File
		}
		if out[i].Line != out[j].Line {
			return out[i].Line < out[j].Line
		}
		return out[i].Msg < out[j].Msg
	})
	return out
}

var (
	inlineLink = regexp.MustCompile(`!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	refDef     = regexp.MustCompile(`^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$`)
	codeSpan   = regexp.MustCompile("`+[^`]*`+")
	scheme     = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)
)

// markdownLines returns the lines of a Markdown file with fenced code
// blocks blanked out (line numbers kept).
func markdownLines(b []byte) []string {
	lines := strings.Split(string(b), "\n")
	fence := ""
	for i, l := range lines {
		t := strings.TrimLeft(l, " ")
		if fence == "" {
			if strings.HasPrefix(t, "```") || strings.HasPrefix(t, "~~~") {
				fence = t[:3]
				lines[i] = ""
			}
			continue
		}
		if strings.HasPrefix(t, fence) {
			fence = ""
		}
		lines[i] = ""
	}
	return lines
}

func (r *repo) checkMarkdownLinks(name string, b []byte) []Problem {
	var out []Problem
	for i, l := range markdownLines(b) {
		l = codeSpan.ReplaceAllString(l, "")
		var targets []string
		for _, m := range inlineLink.FindAllStringSubmatch(l, -1) {
			targets = append(targets, m[1])
		}
		if m := refDef.FindStringSubmatch(l); m != nil {
			targets = append(targets, m[1])
		}
		for _, t := range targets {
			if scheme.MatchString(t) || strings.HasPrefix(t, "//") {
				continue
			}
			if msg := r.resolveLink(name, t); msg != "" {
				out = append(out, Problem{name, i + 1, msg})
			}
		}
	}
	return out
}

// resolveLink checks one relative link target of file from; "" when it
// resolves.
func (r *repo) resolveLink(from, target string) string {
	p, anchor, _ := strings.Cut(target, "#")
	if q, _, ok := strings.Cut(p, "?"); ok {
		p = q
	}
	file := from
	if p != "" {
		var ok bool
		if file, ok = r.join(from, p); !ok {
			return fmt.Sprintf("link %q leaves the repository", target)
		}
		if _, tracked := r.files[file]; !tracked && !r.dirs[file] {
			return fmt.Sprintf("link %q: %s is not in the repository", target, file)
		}
	}
	return r.checkAnchor(target, file, anchor)
}

// join resolves p against the directory of from (or the root, for a
// leading slash) and reports whether it stays inside the repository.
func (r *repo) join(from, p string) (string, bool) {
	var j string
	if strings.HasPrefix(p, "/") {
		j = path.Clean(strings.TrimPrefix(p, "/"))
	} else {
		j = path.Join(path.Dir(from), p)
	}
	if j == ".." || strings.HasPrefix(j, "../") {
		return "", false
	}
	if j == "." {
		j = ""
	}
	return strings.TrimSuffix(j, "/"), true
}

func (r *repo) checkAnchor(target, file, anchor string) string {
	if anchor == "" || !strings.HasSuffix(file, ".md") {
		return ""
	}
	if !r.headings(file)[strings.ToLower(anchor)] {
		return fmt.Sprintf("link %q: %s has no heading with anchor #%s", target, file, anchor)
	}
	return ""
}

var (
	atxHeading    = regexp.MustCompile(`^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$`)
	setextUnder   = regexp.MustCompile(`^\s{0,3}(=+|-+)\s*$`)
	htmlAnchor    = regexp.MustCompile(`<a\s+(?:name|id)="([^"]+)"`)
	mdLinkText    = regexp.MustCompile(`!?\[([^\]]*)\]\([^)]*\)`)
	htmlTag       = regexp.MustCompile(`<[^>]+>`)
	emphasisChars = strings.NewReplacer("`", "", "*", "")
)

// headings returns the anchors GitHub makes for a Markdown file's headings
// (and explicit <a name> / id anchors).
func (r *repo) headings(file string) map[string]bool {
	if a, ok := r.anchors[file]; ok {
		return a
	}
	a := map[string]bool{}
	seen := map[string]int{}
	add := func(text string) {
		s := Slug(text)
		if n := seen[s]; n > 0 {
			a[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			a[s] = true
		}
		seen[s]++
	}
	lines := markdownLines(r.files[file])
	for i, l := range lines {
		for _, m := range htmlAnchor.FindAllStringSubmatch(l, -1) {
			a[strings.ToLower(m[1])] = true
		}
		if m := atxHeading.FindStringSubmatch(l); m != nil {
			add(m[1])
			continue
		}
		prev := ""
		if i > 0 {
			prev = strings.TrimSpace(lines[i-1])
		}
		if i > 0 && setextUnder.MatchString(l) && prev != "" && !strings.HasPrefix(prev, "|") &&
			!strings.HasPrefix(prev, "#") && !setextUnder.MatchString(lines[i-1]) {
			add(prev)
		}
	}
	r.anchors[file] = a
	return a
}

// Slug is GitHub's anchor for a heading: the rendered text lower-cased,
// everything but letters, digits, spaces, hyphens and underscores dropped,
// spaces turned into hyphens.
func Slug(heading string) string {
	t := mdLinkText.ReplaceAllString(heading, "$1")
	t = htmlTag.ReplaceAllString(t, "")
	t = emphasisChars.Replace(t)
	var b strings.Builder
	for _, c := range strings.ToLower(strings.TrimSpace(t)) {
		switch {
		case c == ' ':
			b.WriteByte('-')
		case c == '-' || c == '_' || unicode.IsLetter(c) || unicode.IsDigit(c) || unicode.Is(unicode.Mn, c):
			b.WriteRune(c)
		}
	}
	return b.String()
}

var mention = regexp.MustCompile(`(?:^|[^A-Za-z0-9_./-])([A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md)(#[A-Za-z0-9_-]+)?\b`)

// checkMentions checks every *.md path named anywhere in a text file,
// link or not.
func (r *repo) checkMentions(name string, b []byte) []Problem {
	var out []Problem
	for i, l := range strings.Split(string(b), "\n") {
		for _, m := range mention.FindAllStringSubmatchIndex(l, -1) {
			mentioned := l[m[2]:m[3]]
			if inURL(l, m[2:4]) {
				continue
			}
			file, ok := r.findMention(name, strings.TrimPrefix(mentioned, "./"))
			if !ok {
				out = append(out, Problem{name, i + 1, fmt.Sprintf("%s is not in the repository", mentioned)})
				continue
			}
			if m[4] >= 0 {
				anchor := l[m[4]+1 : m[5]]
				if msg := r.checkAnchor(mentioned+"#"+anchor, file, anchor); msg != "" {
					out = append(out, Problem{name, i + 1, msg})
				}
			}
		}
	}
	return out
}

// inURL reports whether the match starts inside a whitespace-delimited
// word that is a URL.
func inURL(l string, match []int) bool {
	start := strings.LastIndexAny(l[:match[0]+1], " \t(<[") + 1
	end := strings.IndexAny(l[match[0]:], " \t)>]")
	if end < 0 {
		end = len(l)
	} else {
		end += match[0]
	}
	return strings.Contains(l[start:end], "://")
}

// findMention resolves a mentioned path: relative to the mentioning file,
// from the root, or as the tail of a tracked path (prose names
// "architecture.md" for docs/architecture.md).
func (r *repo) findMention(from, p string) (string, bool) {
	if j, ok := r.join(from, p); ok {
		if _, tracked := r.files[j]; tracked {
			return j, true
		}
	}
	if _, tracked := r.files[p]; tracked {
		return p, true
	}
	if strings.HasPrefix(p, "../") {
		return "", false
	}
	var found []string
	for f := range r.files {
		if strings.HasSuffix(f, "/"+p) {
			found = append(found, f)
		}
	}
	if len(found) == 0 {
		return "", false
	}
	sort.Strings(found)
	return found[0], true
}

var (
	// A comment marker at the start of a continuation line, so that a
	// citation wrapped across lines reads as one.
	commentJoin = regexp.MustCompile(`\n[ \t]*(?://|--|#|\*)?[ \t]*`)
	citation    = regexp.MustCompile(`([A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md),\s+"([^"]+)"`)
)

// checkCitations checks `x.md, "Heading"` citations against x.md's headings.
func (r *repo) checkCitations(name string, b []byte) []Problem {
	s := string(b)
	// Join lines, remembering where each joined offset came from.
	var joined strings.Builder
	var lineAt []int // line number of each byte of joined
	line := 1
	last := 0
	for _, loc := range commentJoin.FindAllStringIndex(s, -1) {
		for _, c := range []byte(s[last:loc[0]]) {
			joined.WriteByte(c)
			lineAt = append(lineAt, line)
		}
		joined.WriteByte(' ')
		lineAt = append(lineAt, line)
		line++
		last = loc[1]
	}
	for _, c := range []byte(s[last:]) {
		joined.WriteByte(c)
		lineAt = append(lineAt, line)
	}
	j := joined.String()
	var out []Problem
	for _, m := range citation.FindAllStringSubmatchIndex(j, -1) {
		p := strings.TrimPrefix(j[m[2]:m[3]], "./")
		heading := j[m[4]:m[5]]
		file, ok := r.findMention(name, p)
		if !ok {
			continue // reported by checkMentions
		}
		if !r.headings(file)[Slug(heading)] {
			out = append(out, Problem{name, lineAt[m[0]], fmt.Sprintf("%s has no heading %q", file, heading)})
		}
	}
	return out
}

// Citations of places outside the repository. Built from pieces so that
// this file does not match itself.
// outsideDir is the sibling reference directory outside the repository,
// spelled in pieces so that this file does not itself cite it.
const outsideDir = ".." + "/" + "sha" + "red"

var outside = []struct {
	re  *regexp.Regexp
	msg string
}{
	{regexp.MustCompile(regexp.QuoteMeta(outsideDir)), "cites the " + outsideDir + " directory, which is outside the repository"},
	{regexp.MustCompile("\u00a7" + `\s?[0-9A-Z]`), "cites a numbered section of a document outside the repository"},
	{regexp.MustCompile(`\bspec` + `/[A-Za-z0-9_-]+\.md\b`), "cites a spec file outside the repository"},
	{regexp.MustCompile(`\bspec` + ` \x{00a7}`), "cites a spec section outside the repository"},
}

func checkOutside(name string, b []byte) []Problem {
	var out []Problem
	for i, l := range strings.Split(string(b), "\n") {
		for _, o := range outside {
			if o.re.MatchString(l) {
				out = append(out, Problem{name, i + 1, o.msg})
				break
			}
		}
	}
	return out
}
