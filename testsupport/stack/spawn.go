package stack

import (
	"os/exec"
	"runtime"
	"sync"
)

// Children are started with Pdeathsig so they die with the launcher even if
// it is killed. The kernel sends that signal when the *thread* that forked
// the child exits, not the process, and the Go runtime may end threads
// (golang/go#27505): a child forked from an arbitrary goroutine can be
// killed at a random moment. So every child is forked from one goroutine
// locked to an OS thread that never exits.

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

// spawner is process-wide because the thread it pins is: one per process.
var (
	spawnOnce sync.Once
	spawnCh   chan spawnReq
)

func startPinned(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnCh = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for r := range spawnCh {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnCh <- spawnReq{cmd: cmd, done: done}
	return <-done
}
