package proxy

import (
	"sync"

	"github.com/hamr-project/hamr/routing"
)

// failure is a failed dial, handed from a loop to the route's reporter.
type failure struct {
	pick   routing.Pick
	err    error
	notify func() // tells p.Route's watchers; nil if the dial changed nothing
}

// failures queues for the route's reporter goroutine what follows a failed
// dial beyond the routing state: the log line, the routing watchers and
// Options.OnDialError (the daemon's checker, its logs, metrics and VRRP
// tracking). On a loop they took 12-364 µs during a failover, in which
// the loop served nobody; now a loop that met a dead destination goes on
// at once to the next one. At most one failure per destination waits: a
// later one only replaces its error.
type failures struct {
	mu      sync.Mutex
	pending []failure
	stopped bool
	kick    chan struct{} // cap 1: pending is not empty
	stop    chan struct{} // closed by stopReporter
	wg      sync.WaitGroup
}

// startReporter starts the goroutine that reports failed dials; it runs
// until stopReporter.
func (r *Route) startReporter() {
	r.fails.wg.Go(func() {
		for {
			select {
			case <-r.fails.kick:
				r.reportPending()
			case <-r.fails.stop:
				r.reportPending()
				return
			}
		}
	})
}

// stopReporter reports what is pending and ends the reporter. Failures
// that come later, if any, are reported by their caller itself.
func (r *Route) stopReporter() {
	r.fails.mu.Lock()
	if !r.fails.stopped {
		r.fails.stopped = true
		close(r.fails.stop)
	}
	r.fails.mu.Unlock()
	r.fails.wg.Wait()
}

// reportFailure hands f to the reporter.
func (r *Route) reportFailure(f failure) {
	q := &r.fails
	q.mu.Lock()
	if q.stopped {
		q.mu.Unlock()
		r.report(f)
		return
	}
	merged := false
	for i := range q.pending {
		if p := &q.pending[i]; p.pick.Route == f.pick.Route && p.pick.Index == f.pick.Index {
			p.err = f.err
			if p.notify == nil {
				p.notify = f.notify
			}
			merged = true
			break
		}
	}
	if !merged {
		q.pending = append(q.pending, f)
	}
	q.mu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

func (r *Route) reportPending() {
	r.fails.mu.Lock()
	fs := r.fails.pending
	r.fails.pending = nil
	r.fails.mu.Unlock()
	for _, f := range fs {
		r.report(f)
	}
}

func (r *Route) report(f failure) {
	if f.notify != nil {
		r.log.Warn("dial failed; destination marked down", "destination", f.pick.Addr, "err", f.err)
		f.notify()
	} else {
		r.log.Debug("dial failed", "destination", f.pick.Addr, "err", f.err)
	}
	if r.onDialError != nil {
		r.onDialError(f.pick, f.err)
	}
}
