package command

import (
	"context"
	"os"
)

// WhileWaiting calls wait with a context that the first signal arriving on
// sigs (a channel the caller registered with signal.Notify) cancels, and
// returns that signal, or nil if none arrived before wait returned. A
// signal that arrives as wait returns may count either way: the caller
// undoes what wait did when one is returned (releases the lock it took,
// rolls back the transaction it began). Whoever signals treetx while it
// waits for a lock or builds a shadow means to stop it before the command
// starts.
func WhileWaiting(ctx context.Context, sigs <-chan os.Signal, wait func(context.Context)) os.Signal {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop, got := make(chan struct{}), make(chan os.Signal, 1)
	go func() {
		select {
		case s := <-sigs:
			cancel()
			got <- s
		case <-stop:
			got <- nil
		}
	}()
	wait(wctx)
	close(stop)
	return <-got
}
