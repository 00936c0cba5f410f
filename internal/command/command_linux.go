package command

import (
	"os"
	"os/signal"
	"syscall"
	"time"
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

// probeSignal is the signal flushSignals sends this process: SIGRTMAX, a
// real-time signal nothing else uses, numbered above every other.
const probeSignal = syscall.Signal(64)

// flushSignals returns once the signals this process received before the
// call have been passed on to the channels registered for them with
// signal.Notify, or after a second if that cannot be told. os/signal passes
// signals on from a goroutine of its own, some time after they arrive. The
// kernel delivers a process's pending signals lowest number first, and
// os/signal passes them on in the order they come: once a probe numbered
// above all the others comes back, those that arrived before it are on
// their channels.
func flushSignals() {
	probe := make(chan os.Signal, 1)
	signal.Notify(probe, probeSignal)
	defer signal.Stop(probe)
	if err := syscall.Kill(os.Getpid(), probeSignal); err != nil {
		return
	}
	select {
	case <-probe:
	case <-time.After(time.Second):
	}
}
