package pgcluster

import "syscall"

// detached puts a child in its own process group so a terminal's SIGINT
// reaches only us; we stop the server ourselves.
func detached() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
