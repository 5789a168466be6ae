package tasks

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// A task that skips a record because its last failed attempt is too
// recent comes back when the backoff ends. The failure's own timer wakes
// only the task whose saga failed: when a retried saga had already moved
// the record on (an operator's abandon woke the start task before the
// abandoned saga's attempt was recorded), the next task skipped it for
// the fresh backoff and nothing woke it again. A request sat in
// ReplacementDone until the garbage collect task's period.
func TestBackoffSkipWakesTheTaskWhenDue(t *testing.T) {
	var mu sync.Mutex
	var woken []string
	env := Env{Retry: RetryBackoff{Initial: 50 * time.Millisecond}, retryWakes: &retryWakes{}}
	env.activate = func(name string) {
		mu.Lock()
		defer mu.Unlock()
		woken = append(woken, name)
	}
	now := time.Now()
	j := job{key: "k", record: uuid.New(), task: ROGarbageCollectName,
		attempts: store.Attempts{Attempts: 1, LastErrorTime: &now}}
	for range 3 { // skipped on every pass until due: still one wake
		started, err := startSaga(context.Background(), env, nil, j, sagadef.ROGarbageCollect, nil)
		if started || err != nil {
			t.Fatalf("started %v, %v: want the record skipped while it backs off", started, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := append([]string(nil), woken...)
		mu.Unlock()
		if len(got) > 0 {
			time.Sleep(200 * time.Millisecond) // no second wake follows
			mu.Lock()
			got = append([]string(nil), woken...)
			mu.Unlock()
			if len(got) != 1 || got[0] != ROGarbageCollectName {
				t.Fatalf("woken %v, want %s once", got, ROGarbageCollectName)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the task that skipped a record backing off was never woken when it was due")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
