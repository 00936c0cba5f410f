package snapshot

import (
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// dirNode is a directory of a tree being walked by a pool.
type dirNode struct {
	parent *dirNode
	rel    string // relative to the root, "" for the root
	// pending counts the directory's own listing and its subdirectories
	// not finished yet; at zero, the pool's post runs for it.
	pending atomic.Int64
	// What the builder keeps from the listing for post: the source's
	// metadata, the attributes of the source and of the new shadow
	// directory (a default ACL it inherited).
	st         unix.Stat_t
	want, have []Xattr
}

// pool walks a tree's directories with several goroutines. list is called
// once per directory and calls add for each subdirectory; post is called for
// a directory once its listing and those of all directories below it have
// returned, children before parents. The first error stops the walk.
type pool struct {
	list func(w *worker, n *dirNode) error
	post func(n *dirNode) error
	// enter, if set, is called first by each worker goroutine (to take
	// another identity on its thread: see creds.Worker).
	enter func() error

	mu       sync.Mutex // guards what follows
	cond     *sync.Cond
	queue    []*dirNode // taken last in first out, so the walk stays deep, not wide
	err      error
	finished bool
}

// worker holds one goroutine's buffers.
type worker struct {
	scratch []byte
	copyBuf []byte
	xbuf    xattrBuf
	records []Record // manifest records of the directory being listed
}

// run walks from the root with workers goroutines (GOMAXPROCS if zero) and
// returns the first error.
func (p *pool) run(workers int) error {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	p.cond = sync.NewCond(&p.mu)
	root := &dirNode{}
	root.pending.Store(1)
	p.queue = append(p.queue, root)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p.enter != nil {
				if err := p.enter(); err != nil {
					p.fail(err)
					return
				}
			}
			w := &worker{scratch: newScratch()}
			for {
				n := p.take()
				if n == nil {
					return
				}
				err := p.list(w, n)
				if err == nil {
					err = p.done(n)
				}
				if err != nil {
					p.fail(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return p.err
}

// add queues c, a subdirectory of n found by list.
func (p *pool) add(n *dirNode, rel string) {
	c := &dirNode{parent: n, rel: rel}
	c.pending.Store(1)
	n.pending.Add(1)
	p.mu.Lock()
	p.queue = append(p.queue, c)
	p.mu.Unlock()
	p.cond.Signal()
}

// take returns the next directory to list, waiting for one; nil once the
// walk is finished or failed.
func (p *pool) take() *dirNode {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.queue) == 0 && !p.finished && p.err == nil {
		p.cond.Wait()
	}
	if p.finished || p.err != nil {
		return nil
	}
	n := p.queue[len(p.queue)-1]
	p.queue = p.queue[:len(p.queue)-1]
	return n
}

func (p *pool) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
	p.cond.Broadcast()
}

// done ends one share of n (its listing, or a subdirectory): after the
// last, post runs for n and, in turn, a share of its parent ends. The
// root's last share ends the walk.
func (p *pool) done(n *dirNode) error {
	for ; n != nil; n = n.parent {
		if n.pending.Add(-1) > 0 {
			return nil
		}
		if err := p.post(n); err != nil {
			return err
		}
	}
	p.mu.Lock()
	p.finished = true
	p.mu.Unlock()
	p.cond.Broadcast()
	return nil
}
