package proxy

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A loop is one event loop of a Route: a goroutine with its own epoll
// instance, which accepts clients, dials destinations and relays the
// bytes of the sessions it owns. A Route runs one loop per P
// (GOMAXPROCS). The sockets never enter the runtime's netpoller: they
// are registered once, edge-triggered, in the loop's epoll, and a
// message costs the loop one read(2) and one write(2), with no goroutine
// to wake and no read that ends in EAGAIN.
//
// Everything a loop owns (its sessions' sockets and flows, the table)
// is touched by its goroutine only. Other goroutines talk to it with
// post, which queues a function and wakes the loop through an eventfd.
type loop struct {
	r        *Route
	epfd     int
	f        *os.File        // epfd, registered with the runtime's netpoller
	rc       syscall.RawConn // f's
	deadline int64           // f's read deadline (as now), -1 if none
	efd      int             // eventfd that wakes the loop for posted commands
	start    time.Time
	now      int64  // nanoseconds since start, at the last wake-up
	buf      []byte // read buffer shared by the loop's flows
	events   []unix.EpollEvent
	table    []*session   // by socket descriptor
	load     atomic.Int64 // sessions served, for balancing (see balance)
	seq      uint32       // last session tag handed out

	lns    []*lnSlot    // listeners this loop accepts on (one, or none)
	dials  []dialTimer  // connect deadlines, in order (one timeout per Route)
	drains []drainTimer // directions that ended, waiting for the kernel to write their bytes
	ready  []readyFlow  // flows that used up their budget: run again
	spare  []readyFlow  // the other ready slice, swapped each round
	closed bool         // exit was posted
	again  bool         // harvest again before waiting (see accept)

	mu     sync.Mutex
	cmds   []func(*loop)
	run    []func(*loop) // cmds being run; swapped with cmds
	exited bool          // the loop has released its descriptors: post drops commands
	ending bool          // exit was posted: a command may never run
}

// Tags in the high half of an epoll event's data: which kind of
// descriptor it is. Sessions use their own tag (2 and up), so that an
// event harvested for a socket closed meanwhile, whose number may
// already belong to a new session, is recognised and ignored.
const (
	tagWake     = 0
	tagListener = 1
	firstTag    = 2
)

// lnSlot is a listener as one loop sees it.
type lnSlot struct {
	ln     *listener
	paused bool  // taken out of the epoll after an accept error
	until  int64 // when a paused listener goes back in
}

// dialTimer is the connect deadline of one dial attempt.
type dialTimer struct {
	at      int64
	s       *session
	attempt int
}

// readyFlow is a flow to run again without waiting for an event.
type readyFlow struct {
	s *session
	f *flow
}

// Per-wake-up limits, so that one busy socket cannot starve the others.
const (
	maxEvents      = 128
	acceptsPerWake = 64
)

func newLoop(r *Route) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	f := os.NewFile(uintptr(epfd), "hamr-loop-epoll") // non-blocking: uses the netpoller
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("epoll: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd), Pad: tagWake}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		unix.Close(efd)
		f.Close()
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	return &loop{
		r:        r,
		epfd:     epfd,
		f:        f,
		rc:       rc,
		deadline: -1,
		efd:      efd,
		start:    time.Now(),
		buf:      make([]byte, relayBufSize),
		events:   make([]unix.EpollEvent, maxEvents),
		seq:      firstTag - 1,
	}, nil
}

// post queues fn to run on the loop's goroutine, and wakes the loop. It
// never blocks, so it may be called from the loop itself and under
// Route.mu.
func (l *loop) post(fn func(*loop)) {
	l.mu.Lock()
	l.queue(fn)
	l.mu.Unlock()
}

// tryPost is post that reports whether fn was queued: false once the
// loop has ended, or is ending (exit was posted).
func (l *loop) tryPost(fn func(*loop)) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.ending && l.queue(fn)
}

// queue is post's part under l.mu; it reports whether fn was queued.
func (l *loop) queue(fn func(*loop)) bool {
	if l.exited {
		// Nothing is left to act on, and l.efd's number may be reused.
		return false
	}
	l.cmds = append(l.cmds, fn)
	if len(l.cmds) == 1 {
		// Under mu: release closes efd only after setting exited, so
		// this write cannot land in a descriptor that reused the number.
		var one = [8]byte{1}
		rawWrite(l.efd, one[:])
	}
	return true
}

// call runs fn on the loop's goroutine and waits for it. It must not be
// called from a loop, nor after Shutdown.
func (l *loop) call(fn func(*loop)) {
	done := make(chan struct{})
	l.post(func(l *loop) {
		fn(l)
		close(done)
	})
	<-done
}

// loopRun is the loop's goroutine. It returns after exit was posted;
// by then the Route has no session left.
//
// The loop does not block in epoll_wait(2): its epoll descriptor is
// itself waited on through the runtime's netpoller, and harvested with a
// zero timeout. A thread blocked in a system call would have its P taken
// by the runtime's monitor and wake up late; a parked goroutine costs
// nothing and is resumed by the scheduler's spinning threads within
// microseconds.
func (l *loop) loopRun() {
	defer l.release()
	for !l.closed {
		l.arm()
		err := l.rc.Read(l.poll)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			l.r.log.Error("loop stopped", "err", err)
			return
		}
		l.now = int64(time.Since(l.start))
		l.expire()
	}
}

// poll is the RawConn.Read callback: it harvests and handles events until
// none are left, and returns false to wait for more (or for the read
// deadline). It returns true once the loop must end, or when a timer is
// due before the deadline armed.
func (l *loop) poll(fd uintptr) bool {
	for !l.closed {
		n, err := rawHarvest(int(fd), l.events)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			l.r.log.Error("epoll_wait failed", "err", err)
			l.closed = true
			return true
		}
		l.now = int64(time.Since(l.start))
		l.again = false
		for i := 0; i < n; i++ {
			l.dispatch(&l.events[i])
		}
		l.runReady()
		l.expire()
		if l.closed {
			return true
		}
		if next := l.nextTimer(); next >= 0 && (l.deadline < 0 || next < l.deadline) {
			return true // arm the earlier deadline
		}
		if n < len(l.events) && len(l.ready) == 0 && !l.again {
			// The ready list was empty at the harvest: whatever comes
			// later makes the epoll descriptor readable again, an edge
			// for the netpoller.
			return false
		}
	}
	return true
}

// nextTimer returns when the next timer is due (as now), -1 if none.
func (l *loop) nextTimer() int64 {
	next := int64(-1)
	if len(l.dials) > 0 {
		next = l.dials[0].at
	}
	if d := l.nextDrain(); d >= 0 && (next < 0 || d < next) {
		next = d
	}
	for _, sl := range l.lns {
		if sl.paused && (next < 0 || sl.until < next) {
			next = sl.until
		}
	}
	return next
}

// arm sets the epoll descriptor's read deadline to the next timer.
func (l *loop) arm() {
	next := l.nextTimer()
	if next == l.deadline {
		return
	}
	l.deadline = next
	if next < 0 {
		l.f.SetReadDeadline(time.Time{})
		return
	}
	l.f.SetReadDeadline(l.start.Add(time.Duration(next)))
}

// dispatch handles one epoll event.
func (l *loop) dispatch(ev *unix.EpollEvent) {
	fd, tag := int(ev.Fd), uint32(ev.Pad)
	switch tag {
	case tagWake:
		l.commands()
		return
	case tagListener:
		for _, sl := range l.lns {
			if sl.ln.fd == fd && !sl.paused {
				l.accept(sl)
			}
		}
		return
	}
	if fd >= len(l.table) {
		return
	}
	s := l.table[fd]
	if s == nil || s.tag != tag {
		return // closed since; the number may be reused
	}
	l.event(s, fd, ev.Events)
}

// commands runs what other goroutines posted.
func (l *loop) commands() {
	var b [8]byte
	rawRead(l.efd, b[:])
	l.mu.Lock()
	l.run, l.cmds = l.cmds, l.run[:0]
	l.mu.Unlock()
	for i, fn := range l.run {
		fn(l)
		l.run[i] = nil
	}
}

// runReady runs the flows that used up their budget in the last round.
func (l *loop) runReady() {
	if len(l.ready) == 0 {
		return
	}
	l.ready, l.spare = l.spare[:0], l.ready
	for i, rf := range l.spare {
		l.spare[i] = readyFlow{}
		if rf.s.state == stateOpen && rf.s.k == nil { // not handed to the kernel meanwhile
			l.pumpOrClose(rf.s, rf.f, true)
		}
	}
}

// expire fails dial attempts past their deadline, drops the timers of
// dials that finished, and resumes paused listeners. A deadline armed
// for a dial that finished early fires for nothing, once: cheaper than
// re-arming it for every connection.
func (l *loop) expire() {
	for len(l.dials) > 0 {
		t := l.dials[0]
		live := t.s.dialing(t.attempt)
		if live && t.at > l.now {
			break
		}
		l.dials[0] = dialTimer{}
		l.dials = l.dials[1:]
		if live {
			l.dialFailed(t.s, errConnectTimeout)
		}
	}
	if len(l.dials) == 0 && cap(l.dials) > 1024 {
		l.dials = nil // let a large backing array go
	}
	l.expireDrains()
	for _, sl := range l.lns {
		if sl.paused && sl.until <= l.now {
			l.listen(sl)
		}
	}
}

// add registers fd with the loop's epoll for every event, edge-triggered:
// a socket is registered once and never modified.
func (l *loop) add(fd int, tag uint32) error {
	ev := unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
		Fd:     int32(fd),
		Pad:    int32(tag),
	}
	if err := rawEpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// put records s as the owner of fd in the table.
func (l *loop) put(fd int, s *session) {
	if fd >= len(l.table) {
		t := make([]*session, max(2*len(l.table), fd+1, 64))
		copy(t, l.table)
		l.table = t
	}
	l.table[fd] = s
}

// nextTag returns a session tag, never one of the reserved ones.
func (l *loop) nextTag() uint32 {
	l.seq++
	if l.seq < firstTag {
		l.seq = firstTag
	}
	return l.seq
}

// addListener starts accepting on ln.
func (l *loop) addListener(ln *listener) {
	sl := &lnSlot{ln: ln}
	l.lns = append(l.lns, sl)
	l.listen(sl)
}

// listen puts sl's listener into the epoll, after a pause or at first.
// Exclusive: a new client wakes one waiting loop, not all of them.
func (l *loop) listen(sl *lnSlot) {
	sl.paused = false
	ev := unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE,
		Fd:     int32(sl.ln.fd),
		Pad:    tagListener,
	}
	if err := rawEpollCtl(l.epfd, unix.EPOLL_CTL_ADD, sl.ln.fd, &ev); err != nil {
		l.r.log.Error("cannot watch the listening socket; retrying", "err", err)
		l.pause(sl, maxAcceptDelay)
		return
	}
	l.accept(sl) // clients may be waiting already
}

// pause takes sl's listener out of the epoll for d.
func (l *loop) pause(sl *lnSlot, d time.Duration) {
	rawEpollCtl(l.epfd, unix.EPOLL_CTL_DEL, sl.ln.fd, nil)
	sl.paused = true
	sl.until = int64(time.Since(l.start)) + int64(d)
}

// backOff records a failure to serve a client of ln for lack of local
// resources (an accept, or a dial, that failed with EMFILE, say) and
// stops every loop accepting on ln for the grown delay: the loops share
// the listener, and one that went on would take the backlog at its own
// pace and fail the same way.
func (l *loop) backOff(ln *listener, err error) {
	d := ln.failed(l.r, err)
	for _, o := range l.r.loops {
		if o == l {
			l.pauseAtLeast(ln, d) // now: the accepting loop checks at once
		} else {
			o.post(func(o *loop) { o.pauseAtLeast(ln, d) })
		}
	}
}

// pauseAtLeast takes ln out of the loop's epoll for d, or keeps it out
// that long if it is paused already.
func (l *loop) pauseAtLeast(ln *listener, d time.Duration) {
	for _, sl := range l.lns {
		if sl.ln != ln {
			continue
		}
		if !sl.paused {
			l.pause(sl, d)
		} else {
			sl.until = max(sl.until, int64(time.Since(l.start))+int64(d))
		}
	}
}

// removeListener stops accepting on ln. The caller closes it once every
// loop has let go.
func (l *loop) removeListener(ln *listener) {
	for i, sl := range l.lns {
		if sl.ln != ln {
			continue
		}
		if !sl.paused {
			rawEpollCtl(l.epfd, unix.EPOLL_CTL_DEL, ln.fd, nil)
		}
		l.lns = append(l.lns[:i], l.lns[i+1:]...)
		return
	}
}

// closeAll closes every session of the loop, open or being connected
// (the table holds a session's client socket from the moment it is
// accepted).
func (l *loop) closeAll() {
	for _, s := range l.table {
		if s != nil {
			l.closeSession(s)
		}
	}
}

// closeWhere closes the loop's sessions, open or being connected, that
// match.
func (l *loop) closeWhere(match func(*session) bool) {
	for _, s := range l.table {
		if s != nil && s.state != stateClosed && match(s) {
			l.closeSession(s)
		}
	}
}

// dropConnecting closes the clients still being connected that came
// before generation gen (see Route.CloseSessions). A dial on its own
// goroutine comes back to a closed session and is closed then.
func (l *loop) dropConnecting(gen uint64) {
	l.closeWhere(func(s *session) bool { return s.state == stateConnecting && s.gen < gen })
}

// release frees the loop's descriptors when it ends.
func (l *loop) release() {
	for len(l.lns) > 0 {
		l.removeListener(l.lns[0].ln)
	}
	l.mu.Lock()
	l.exited = true
	l.mu.Unlock()
	unix.Close(l.efd)
	l.f.Close()
}
