package command

import (
	"os"
	"syscall"
)

// sysProcAttr makes the child die with SIGKILL when the thread that started
// it (kept by Run until the child exits) dies with this process.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// signaled returns the signal that killed the process, if one did.
func signaled(ps *os.ProcessState) (int, bool) {
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return 0, false
	}
	return int(ws.Signal()), true
}
