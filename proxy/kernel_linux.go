package proxy

import (
	"encoding/binary"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kstate is what a session relayed by the kernel keeps, by direction.
type kstate struct {
	keys    [2]sockKey // the key of the direction's source socket
	counted [2]uint64  // bytes added to the counters
	final   [2]uint64  // bytes written when the direction ended
	wait    [2]int64   // next end check's delay, while the direction waits
	base    [2]uint64  // bytes written to the destination before the join
	out     [2]uint64  // bytes the loop wrote to the destination since
	ctl     [2]relayCtl
	over    [2]uint8  // overflow phase: overNone, overDraining, overRelaying
	owait   [2]int64  // next drain check's delay, while overDraining
	odue    [2]int64  // when that check is due (older timers are void)
	events  [2]uint32 // epoll interest of the client and server sockets
}

// Overflow phases of a direction (see overflow).
const (
	overNone     = iota
	overDraining // the window ran out: waiting for the kernel to write what it redirected
	overRelaying // the loop relays what the source socket holds
)

// relayWindow bounds the bytes of one direction that the kernel has
// redirected and not yet written to the destination: the room a
// session's flow control gives the kernel. Tests lower it.
var relayWindow uint64 = 4 << 20

// Direction indexes of kstate's arrays.
const (
	c2s = 0
	s2c = 1
)

// flow returns s's flow in direction dir.
func (s *session) flow(dir int) *flow {
	if dir == c2s {
		return &s.c2s
	}
	return &s.s2c
}

// kernelEvents is the epoll interest of a session relayed by the kernel:
// only its ends (and errors, always reported), so that the bytes the
// kernel moves do not wake the loop. An overflow adds EPOLLIN and
// EPOLLOUT while the loop relays.
const kernelEvents = unix.EPOLLRDHUP | unix.EPOLLET

// joinAfter is how many replies a session gets from its server before it
// is handed to the kernel: a MySQL handshake takes two, and a client that
// connects for one query and leaves costs less relayed by the loop than
// handed over. Pooled connections and long sessions are handed over.
// Tests lower it.
var joinAfter uint8 = 4

// maybeJoin hands s to the kernel once it has had joinAfter replies and
// the loop holds none of its bytes. It reports whether s is open.
func (l *loop) maybeJoin(s *session) bool {
	if s.replies > joinAfter {
		return true // the kernel could not take s
	}
	if s.replies < joinAfter {
		if s.replies++; s.replies < joinAfter {
			return true
		}
	}
	if !s.quiet() {
		return true // at the next reply, then
	}
	switch l.join(s) {
	case joinRefused:
		s.replies++ // not IPv4, or a map is full: the loop relays s
		return true
	case joinBroken:
		return false
	}
	return l.kernelRelay(s)
}

// Outcomes of join.
const (
	joined      = iota
	joinRefused // nothing changed: the loop relays s
	joinBroken  // s was closed: it was half handed over
)

// quiet reports whether the loop holds none of s's bytes and has read
// no part of a segment its sockets still hold: the kernel takes queued
// segments whole, so a half-read one would be sent twice.
func (s *session) quiet() bool {
	for dir := range 2 {
		f := s.flow(dir)
		if len(f.pend) > 0 || f.inPipe > 0 || f.hasPipe || f.eof || f.blocked {
			return false
		}
		if n, err := unix.IoctlGetInt(f.src, unix.SIOCINQ); err != nil || n != 0 {
			return false
		}
	}
	return true
}

// join puts s's sockets in the maps. It reports joinRefused, with
// nothing changed, when the kernel cannot take s (not IPv4, a map full),
// and joinBroken, with s closed, when it took only part of it.
//
// The bytes the loop relayed are all written: those the sockets hold
// now, or get from now on, the kernel relays after them, in order.
func (l *loop) join(s *session) int {
	rd := l.r.redir
	ck, ok1 := keyOf(s.cfd)
	sk, ok2 := keyOf(s.sfd)
	if !ok1 || !ok2 {
		return joinRefused
	}
	cst := relayState{fd: uint32(s.cfd), tag: s.tag, loop: uint32(l.idx)}
	sst := relayState{fd: uint32(s.sfd), tag: s.tag, loop: uint32(l.idx)}
	ctl := relayCtl{allow: relayWindow, soft: relayWindow / 2}
	cfd, sfd := uint32(s.cfd), uint32(s.sfd)
	steps := []struct {
		m int
		k *sockKey
		v unsafe.Pointer
	}{
		{rd.state, &ck, unsafe.Pointer(&cst)},
		{rd.state, &sk, unsafe.Pointer(&sst)},
		{rd.ctl, &ck, unsafe.Pointer(&ctl)},
		{rd.ctl, &sk, unsafe.Pointer(&ctl)},
		{rd.peers, &ck, unsafe.Pointer(&sfd)},
		{rd.peers, &sk, unsafe.Pointer(&cfd)},
		{rd.members, &ck, unsafe.Pointer(&cfd)},
		{rd.members, &sk, unsafe.Pointer(&sfd)},
	}
	const running = 7 // from this step on, the client socket runs the program
	for i, st := range steps {
		if err := mapUpdate(st.m, st.k, st.v); err != nil {
			if i < running {
				// No socket runs the program yet.
				for _, done := range steps[:i] {
					mapDelete(done.m, done.k)
				}
				return joinRefused
			}
			// The client socket runs the program already: what it has
			// redirected waits in the kernel, and taking the socket
			// out would drop it. End the session rather than lose bytes.
			l.r.log.Warn("client closed: handing its session to the kernel failed halfway", "client", peer(s.cfd), "err", err)
			s.k = &kstate{keys: [2]sockKey{ck, sk}} // for closeSession to clear the maps
			l.closeSession(s)
			return joinBroken
		}
	}
	s.k = &kstate{
		keys:    [2]sockKey{ck, sk},
		counted: [2]uint64{uint64(s.c2s.total), uint64(s.s2c.total)},
		base:    [2]uint64{uint64(s.c2s.total), uint64(s.s2c.total)},
		ctl:     [2]relayCtl{ctl, ctl},
		events:  [2]uint32{kernelEvents, kernelEvents},
	}
	s.c2s.bulk, s.s2c.bulk = false, false // splice(2) would miss what the kernel holds
	// Bytes that arrived before a socket ran the program wait in it for
	// the next segment: setting SO_RCVLOWAT has TCP run it now.
	rawSetsockoptInt(s.sfd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
	rawSetsockoptInt(s.cfd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
	return joined
}

// forget removes s's sockets from the state and ctl maps, once they are
// closed (closing takes them out of the sockhashes).
func (r *redirector) forget(k *kstate) {
	for i := range k.keys {
		mapDelete(r.state, &k.keys[i])
		mapDelete(r.ctl, &k.keys[i])
	}
}

// received returns the bytes of data fd has received (a FIN counts one).
func received(fd int) (uint64, bool) {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, false
	}
	return ti.Bytes_received, true
}

// written returns the bytes written to dir's destination socket,
// acknowledged or queued, by the loop and the kernel; a FIN sent counts
// one, the SYN the server socket sent does not.
func (s *session) written(dir int) (uint64, bool) {
	fd := s.flow(dir).dst
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, false
	}
	q, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return 0, false
	}
	n := ti.Bytes_acked + uint64(q)
	if dir == c2s {
		n = max(n, 1) - 1 // the SYN
	}
	return n, true
}

// kernelEvent handles an epoll event on a socket of a session the
// kernel relays: the end of one direction, an error, or, while the loop
// relays what overflowed, bytes to read or room to write.
func (l *loop) kernelEvent(s *session, fd int, ev uint32) {
	if s.killed() || ev&unix.EPOLLERR != 0 {
		l.closeSession(s)
		return
	}
	k := s.k
	out, in := c2s, s2c // the directions fd is the source and the destination of
	if fd == s.sfd {
		out, in = s2c, c2s
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP) != 0 {
		switch {
		case k.over[in] == overDraining:
			// The destination took some: the kernel's worker is
			// writing again. Check soon.
			k.owait[in] = 0
			l.drainHeld(s, in)
		case k.over[in] == overRelaying && s.flow(in).blocked:
			l.relayHeld(s, in)
		}
		if s.state != stateOpen {
			return
		}
	}
	switch {
	case k.over[out] == overRelaying:
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
			l.relayHeld(s, out)
		}
	case k.over[out] == overDraining:
		// The drain check relays what is held, and then the end.
	case ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 && !s.flow(out).eof && k.wait[out] == 0:
		l.kernelEOF(s, out)
	}
}

// Delays between checks of a direction waiting for the kernel to write
// what it redirected.
const (
	firstDrainWait = int64(50 * time.Microsecond)
	maxDrainWait   = int64(100 * time.Millisecond)
)

// wait schedules a check of s's direction dir after a delay that grows
// with each call (*w holds the last one): the kernel's worker usually
// needs microseconds; a destination that does not read holds it longer.
func (l *loop) wait(s *session, dir int, w *int64, held bool) {
	*w = min(max(2**w, firstDrainWait), maxDrainWait)
	at := l.now + *w
	if held {
		s.k.odue[dir] = at
	}
	l.drains = append(l.drains, drainTimer{at: at, s: s, dir: dir, held: held})
}

// kernelEOF passes the end of direction dir on to its destination once
// the kernel has written every byte the source received: a half-close
// must not overtake them. Until then it checks again.
func (l *loop) kernelEOF(s *session, dir int) {
	f, k := s.flow(dir), s.k
	if f.eof || k.over[dir] != overNone {
		k.wait[dir] = 0 // ended, or the loop relays the end with what is held
		return
	}
	recv, ok1 := received(f.src)
	recv = max(recv, 1) - 1 // the FIN
	if out, ok2 := s.written(dir); ok1 && ok2 && out < recv {
		l.wait(s, dir, &k.wait[dir], false)
		return
	}
	k.wait[dir] = 0
	k.final[dir] = recv
	f.eof = true
	s.countKernel() // counted before dst can see the end
	if err := rawShutdown(f.dst, unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
		l.closeSession(s)
		return
	}
	if s.c2s.eof && s.s2c.eof {
		l.closeSession(s)
	}
}

// kernelEnd is eof's part for a session the kernel relays, which the loop
// ended while relaying what overflowed: the bytes are counted from what
// was written, before dst can see the end.
func (s *session) kernelEnd(f *flow) {
	dir := c2s
	if f == &s.s2c {
		dir = s2c
	}
	k := s.k
	k.out[dir] += uint64(f.n)
	f.n = 0
	k.final[dir], _ = s.written(dir)
	s.countKernel()
}

// drainTimer is the next check of a direction waiting for the kernel.
type drainTimer struct {
	at   int64
	s    *session
	dir  int
	held bool // an overflow's drain check, rather than an end's
}

// expireDrains runs the drain checks that are due.
func (l *loop) expireDrains() {
	if len(l.drains) == 0 {
		return
	}
	due := l.drains
	l.drains = nil
	for _, t := range due {
		if t.at > l.now {
			l.drains = append(l.drains, t)
			continue
		}
		if t.s.state != stateOpen || t.s.k == nil {
			continue
		}
		if !t.held {
			l.kernelEOF(t.s, t.dir)
		} else if k := t.s.k; k.over[t.dir] == overDraining && k.odue[t.dir] == t.at {
			l.drainHeld(t.s, t.dir)
		}
	}
}

// readRing reads the program's records: a socket whose soft limit or
// window was reached. Each goes to the loop that owns the socket.
func (l *loop) readRing() {
	l.r.redir.ring.read(func(rec []byte) {
		if len(rec) < 12 {
			return
		}
		fd := int(binary.NativeEndian.Uint32(rec))
		tag := binary.NativeEndian.Uint32(rec[4:])
		i := int(binary.NativeEndian.Uint32(rec[8:]))
		if i >= len(l.r.loops) {
			return
		}
		if o := l.r.loops[i]; o != l {
			o.post(func(o *loop) { o.overflow(fd, tag) })
			return
		}
		l.overflow(fd, tag)
	})
}

// overflow handles a record of the socket fd of the session tagged tag:
// the direction it is the source of used half its window, or all of it.
//
// Half: the kernel gets more room, as much as the destination took
// since (the window slides with what the kernel wrote).
//
// All: the program holds what the socket receives (where it counts
// against the receive buffer, so that TCP stops the sender) until the
// loop has taken it over. The loop waits until the kernel has written
// every byte it redirected (drainHeld), then relays what is held, in
// order, until the socket is empty (relayHeld), and then gives the
// kernel a new window.
func (l *loop) overflow(fd int, tag uint32) {
	if fd < 0 || fd >= len(l.table) {
		return
	}
	s := l.table[fd]
	if s == nil || s.tag != tag || s.state != stateOpen || s.k == nil {
		return // a record of a session closed since
	}
	dir := c2s
	if fd == s.sfd {
		dir = s2c
	}
	k := s.k
	if k.over[dir] != overNone || s.flow(dir).eof {
		return
	}
	st, ok := l.lookState(s, dir)
	if !ok {
		return
	}
	if st.held > k.ctl[dir].taken {
		k.over[dir] = overDraining
		if l.setEvents(s) {
			l.drainHeld(s, dir)
		}
		return
	}
	// More room: the window slides by what the kernel has written.
	out, ok := s.written(dir)
	if !ok {
		return
	}
	wrote := out - k.base[dir] - k.out[dir]
	c := k.ctl[dir]
	c.allow = max(c.allow, wrote+relayWindow)
	c.soft = st.sent + (c.allow-st.sent)/2
	l.setCtl(s, dir, c)
}

// lookState returns the state of the source socket of s's direction
// dir, once every program run on that socket that began before has
// ended: a TCP_INFO takes the socket's lock, which the program runs
// under.
func (l *loop) lookState(s *session, dir int) (relayState, bool) {
	var st relayState
	received(s.flow(dir).src)
	if err := mapLookup(l.r.redir.state, &s.k.keys[dir], unsafe.Pointer(&st)); err != nil {
		l.r.log.Error("client closed", "client", peer(s.cfd), "err", err)
		l.closeSession(s)
		return st, false
	}
	return st, true
}

// setCtl writes c as the ctl of dir's source socket.
func (l *loop) setCtl(s *session, dir int, c relayCtl) bool {
	if err := mapUpdate(l.r.redir.ctl, &s.k.keys[dir], unsafe.Pointer(&c)); err != nil {
		l.r.log.Error("client closed", "client", peer(s.cfd), "err", err)
		l.closeSession(s)
		return false
	}
	s.k.ctl[dir] = c
	return true
}

// drainHeld waits until the kernel has written every byte it redirected
// in direction dir, and then has the loop relay what the source holds.
func (l *loop) drainHeld(s *session, dir int) {
	k := s.k
	st, ok := l.lookState(s, dir)
	if !ok {
		return
	}
	out, ok := s.written(dir)
	if !ok {
		l.closeSession(s)
		return
	}
	if out < k.base[dir]+st.sent+k.out[dir] {
		l.wait(s, dir, &k.owait[dir], true)
		return
	}
	k.owait[dir] = 0
	k.over[dir] = overRelaying
	if l.setEvents(s) {
		l.relayHeld(s, dir)
	}
}

// relayHeld has the loop relay what dir's source socket holds. Once the
// socket is empty and every byte it held is written, the kernel gets a
// new window. It reports whether s is open.
func (l *loop) relayHeld(s *session, dir int) bool {
	f, k := s.flow(dir), s.k
	queued := len(l.ready)
	err := l.pump(s, f, true)
	k.out[dir] += uint64(f.n) // counted from what was written (countKernel)
	f.n = 0
	if err != nil || s.killed() || (s.c2s.eof && s.s2c.eof) {
		l.closeSession(s)
		return false
	}
	if f.eof || f.blocked || len(f.pend) > 0 || len(l.ready) > queued {
		return true
	}
	// The socket is empty: all it held is written, unless the program
	// held more since. Tell it what was taken; it holds on while it
	// has held more than that.
	st := relayState{}
	var ok bool
	if st, ok = l.lookState(s, dir); !ok {
		return false
	}
	c := relayCtl{allow: st.sent + relayWindow, taken: k.out[dir]}
	c.soft = st.sent + relayWindow/2
	if !l.setCtl(s, dir, c) {
		return false
	}
	if st, ok = l.lookState(s, dir); !ok {
		return false
	}
	if st.held > k.out[dir] {
		return true // held meanwhile: its EPOLLIN comes
	}
	k.over[dir] = overNone
	return l.setEvents(s)
}

// setEvents sets the epoll interest of s's sockets for the overflows
// under way: a source the loop relays from is read, and its destination
// watched for room (to check the kernel's progress, or to write).
func (l *loop) setEvents(s *session) bool {
	k := s.k
	for i, fd := range [2]int{s.cfd, s.sfd} {
		out, in := i, 1-i // client socket: source of c2s, destination of s2c
		ev := uint32(kernelEvents)
		if k.over[out] == overRelaying {
			ev |= unix.EPOLLIN
		}
		if k.over[in] != overNone {
			ev |= unix.EPOLLOUT
		}
		if ev == k.events[i] {
			continue
		}
		e := unix.EpollEvent{Events: ev, Fd: int32(fd), Pad: int32(s.tag)}
		if err := rawEpollCtl(l.epfd, unix.EPOLL_CTL_MOD, fd, &e); err != nil {
			l.r.log.Error("client closed", "err", fmt.Errorf("epoll_ctl: %w", err))
			l.closeSession(s)
			return false
		}
		k.events[i] = ev
	}
	return true
}

// nextDrain returns when the next drain check is due, -1 if none.
func (l *loop) nextDrain() int64 {
	next := int64(-1)
	for _, t := range l.drains {
		if next < 0 || t.at < next {
			next = t.at
		}
	}
	return next
}

// countKernel adds the bytes the kernel relayed for s since the last
// count to its destination's counters: what it wrote to each socket.
func (s *session) countKernel() {
	k := s.k
	for dir := range 2 {
		f := s.flow(dir)
		n, ok := s.written(dir)
		if !ok {
			continue
		}
		switch {
		case f.eof:
			n = min(n, k.final[dir]) // not the FIN
		case s.killed():
			n = max(n, 1) - 1 // kill's shutdown queued a FIN
		}
		if n > k.counted[dir] {
			f.n += int64(n - k.counted[dir])
			f.flush()
			k.counted[dir] = n
		}
	}
}

// kernelRelay finishes handing s to the kernel after join: its sockets
// wait in the loop's epoll for their ends only. It reports whether s is
// open.
func (l *loop) kernelRelay(s *session) bool {
	s.d.kernel.Inc()
	for _, fd := range [2]int{s.cfd, s.sfd} {
		ev := unix.EpollEvent{Events: kernelEvents, Fd: int32(fd), Pad: int32(s.tag)}
		if err := rawEpollCtl(l.epfd, unix.EPOLL_CTL_MOD, fd, &ev); err != nil {
			l.r.log.Error("client closed", "err", fmt.Errorf("epoll_ctl: %w", err))
			l.closeSession(s)
			return false
		}
	}
	return true
}

// kernelRoutes are the started Routes with a kernel relay, for
// countKernelSessions.
var kernelRoutes struct {
	mu sync.Mutex
	rs map[*Route]struct{}
}

func trackKernelRoute(r *Route, on bool) {
	kernelRoutes.mu.Lock()
	defer kernelRoutes.mu.Unlock()
	if !on {
		delete(kernelRoutes.rs, r)
		return
	}
	if kernelRoutes.rs == nil {
		kernelRoutes.rs = make(map[*Route]struct{})
	}
	kernelRoutes.rs[r] = struct{}{}
}

// countWait bounds how long a scrape waits for the loops to count.
const countWait = time.Second

// countKernelSessions has every loop of every Route with a kernel relay
// count the bytes its open sessions moved, and waits for them (at most
// countWait).
func countKernelSessions() {
	kernelRoutes.mu.Lock()
	var loops []*loop
	for r := range kernelRoutes.rs {
		loops = append(loops, r.loops...)
	}
	kernelRoutes.mu.Unlock()
	if len(loops) == 0 {
		return
	}
	done := make(chan struct{}, len(loops))
	posted := 0
	for _, l := range loops {
		if l.tryPost(func(l *loop) {
			for fd, s := range l.table {
				if s != nil && s.k != nil && s.state == stateOpen && fd == s.cfd {
					s.countKernel()
				}
			}
			done <- struct{}{}
		}) {
			posted++
		}
	}
	timeout := time.NewTimer(countWait)
	defer timeout.Stop()
	for range posted {
		select {
		case <-done:
		case <-timeout.C:
			return // a loop that has ended drops the command
		}
	}
}
