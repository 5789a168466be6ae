package tasks

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestPacer(t *testing.T) {
	p := pacer{every: time.Hour}
	a, b := uuid.New(), uuid.New()
	if ok, _ := p.due(a); !ok {
		t.Fatal("first run of a not due")
	}
	if ok, wait := p.due(a); ok || wait <= 0 || wait > time.Hour {
		t.Fatalf("second run of a: due %v, wait %s", ok, wait)
	}
	if ok, _ := p.due(b); !ok {
		t.Fatal("b waits for a")
	}
	p.keepOnly([]uuid.UUID{b})
	if ok, _ := p.due(a); !ok {
		t.Fatal("a forgotten but still paced")
	}

	var kicks atomic.Int32
	done := make(chan struct{}, 2)
	kick := func() { kicks.Add(1); done <- struct{}{} }
	p.kickAfter(time.Millisecond, kick)
	p.kickAfter(time.Millisecond, kick) // already scheduled: no second kick
	<-done
	p.kickAfter(time.Millisecond, kick) // the first fired: a new one may be scheduled
	<-done
	if n := kicks.Load(); n != 2 {
		t.Fatalf("%d kicks, want 2", n)
	}
}
