package tasks

import "github.com/google/uuid"

// lostAnswers remembers the records whose write in a pass ended in an
// error. A connection that breaks after PostgreSQL applied a COMMIT looks
// like any other failure, so the pass cannot tell whether the record
// advanced, and cannot send the wakeup the write's success owes to the
// next task in the chain. A later pass that finds the record advanced (no
// longer among those it waits on, or found where the write would have put
// it) sends it then, once. Without this, a task woken only by that wakeup
// waits for its period: the write happened, so nothing fails again and
// nothing else wakes it.
//
// Only a record seen advanced is owed a wakeup, so a database that keeps
// failing sends none (no two tasks wake each other in a loop). A task's
// activations never overlap, so a task keeps one without a lock.
type lostAnswers struct{ ids map[uuid.UUID]bool }

// note records that id's write may have committed unseen.
func (l *lostAnswers) note(id uuid.UUID) {
	if l.ids == nil {
		l.ids = map[uuid.UUID]bool{}
	}
	l.ids[id] = true
}

// found forgets id, reporting whether its write's outcome was unknown: the
// caller has found the record advanced and owes its wakeup.
func (l *lostAnswers) found(id uuid.UUID) bool {
	ok := l.ids[id]
	delete(l.ids, id)
	return ok
}

// advancedPast forgets every noted id that is not among waiting (the
// records a pass found still waiting, each named by id), returning how
// many: each advanced, by this process's unseen commit or by someone else,
// and owes its wakeup. With nothing noted, the usual case, it reads
// nothing.
func advancedPast[T any](l *lostAnswers, waiting []T, id func(T) uuid.UUID) int {
	if len(l.ids) == 0 {
		return 0
	}
	still := make(map[uuid.UUID]bool, len(waiting))
	for _, w := range waiting {
		still[id(w)] = true
	}
	n := 0
	for noted := range l.ids {
		if !still[noted] {
			delete(l.ids, noted)
			n++
		}
	}
	return n
}
