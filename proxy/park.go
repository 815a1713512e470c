package proxy

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Idle sessions cost no goroutine. A direction whose source has sent
// nothing for idleAfter hands its socket to the idle poller, an epoll
// instance of its own (itself waited on through the runtime's netpoller,
// so no thread blocks in it), and its goroutine ends. When the socket
// becomes readable (data, EOF, error), or the session is closed, a new
// goroutine takes the direction up again. An idle session then costs its
// session struct and two sockets: no stack, no buffer, no pipe.
//
// Idleness is detected with a read deadline that is re-armed at most once
// per idleAfter while the direction is busy: the hot path pays nothing.
const idleAfter = 500 * time.Millisecond

// Relay states.
const (
	relayRunning int32 = iota // a goroutine owns the relay
	relayParked               // the idle poller or session close will resume it
)

// idlePoller is the epoll instance parked directions of one Route wait
// in. The Route owns it: Start creates it, Shutdown closes it once every
// session has ended.
type idlePoller struct {
	epfd   int
	f      *os.File // epfd, registered with the runtime's netpoller
	rc     syscall.RawConn
	done   chan struct{} // closed when run returns
	mu     sync.Mutex
	next   uint64
	parked map[uint64]*relay
	events [128]unix.EpollEvent // used by the poller goroutine only
}

// newIdlePoller creates the epoll instance and starts its goroutine.
func newIdlePoller() (*idlePoller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("idle poller: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("idle poller: %w", err)
	}
	p := &idlePoller{epfd: fd, done: make(chan struct{}), parked: make(map[uint64]*relay)}
	p.f = os.NewFile(uintptr(fd), "hamr-idle-epoll") // non-blocking: uses the netpoller
	if p.rc, err = p.f.SyscallConn(); err != nil {
		p.f.Close()
		return nil, fmt.Errorf("idle poller: %w", err)
	}
	go p.run()
	return p, nil
}

// run waits for parked sockets to become readable until close.
func (p *idlePoller) run() {
	defer close(p.done)
	for {
		if err := p.rc.Read(p.poll); err != nil {
			return // closed
		}
	}
}

// close stops the poller. Nothing may be parked in it any more.
func (p *idlePoller) close() {
	p.f.Close()
	<-p.done
}

// poll is the RawConn.Read callback of the poller: it resumes every
// direction whose socket is ready, and returns false (wait) when there
// are none left.
func (p *idlePoller) poll(fd uintptr) bool {
	for {
		n, err := unix.EpollWait(int(fd), p.events[:], 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return false
		}
		for _, ev := range p.events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			p.mu.Lock()
			c := p.parked[id]
			p.mu.Unlock()
			if c != nil {
				c.resume()
			}
		}
		if n < len(p.events) {
			return false
		}
	}
}

// park hands c's source to the poller. It reports true if the calling
// goroutine must end: the direction is parked (or already resumed by
// another goroutine). On false the caller keeps relaying.
func (c *relay) park() bool {
	p := c.s.r.idle
	p.mu.Lock()
	p.next++
	id := p.next
	p.parked[id] = c
	p.mu.Unlock()

	op := unix.EPOLL_CTL_MOD
	if !c.inEpoll {
		op = unix.EPOLL_CTL_ADD
	}
	c.inEpoll = true
	c.id = id
	c.state.Store(relayParked)
	// From here on another goroutine may own c: touch only locals.
	var cerr error
	err := c.srcRC.Control(func(fd uintptr) {
		ev := unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
			Fd:     int32(uint32(id)),
			Pad:    int32(uint32(id >> 32)),
		}
		cerr = unix.EpollCtl(p.epfd, op, int(fd), &ev)
	})
	if err == nil && cerr == nil {
		return true
	}
	// Not registered: the socket is closed (err), or epoll refused it.
	// Take the direction back unless someone resumed it already.
	if !c.state.CompareAndSwap(relayParked, relayRunning) {
		return true
	}
	p.forget(id)
	if cerr != nil {
		c.inEpoll = op == unix.EPOLL_CTL_MOD
		c.noPark = true // keep this direction on its goroutine
	}
	return false
}

// resume gives a parked direction a goroutine again, once. The idle
// poller calls it when the socket is ready, Session.close after closing
// the sockets (which also takes them out of the poller's epoll).
func (c *relay) resume() {
	if c.state.CompareAndSwap(relayParked, relayRunning) {
		c.s.r.idle.forget(c.id)
		go c.loop()
	}
}

func (p *idlePoller) forget(id uint64) {
	p.mu.Lock()
	delete(p.parked, id)
	p.mu.Unlock()
}
