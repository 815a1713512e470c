package vip

import (
	"context"
	"net"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
)

// linkWatcher polls the state of the tracked interfaces and reports the
// names of those down whenever the set changes.
type linkWatcher struct {
	h     *netlink.Handle
	names []string
	every time.Duration
	c     chan []string // latest down set; capacity 1
}

// linkUp reports whether a link is administratively up and operationally
// up (or unknown, as for links without carrier detection).
func linkUp(l netlink.Link) bool {
	a := l.Attrs()
	return a.Flags&net.FlagUp != 0 && (a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown)
}

// down returns the tracked interfaces that are down or missing.
func (w *linkWatcher) down() []string {
	var d []string
	for _, n := range w.names {
		l, err := w.h.LinkByName(n)
		if err != nil || !linkUp(l) {
			d = append(d, n)
		}
	}
	return d
}

// run polls until ctx is done.
func (w *linkWatcher) run(ctx context.Context, last []string) {
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d := w.down()
		if slices.Equal(d, last) {
			continue
		}
		last = d
		select { // replace a value not yet taken
		case <-w.c:
		default:
		}
		w.c <- d
	}
}
