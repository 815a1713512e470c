package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A redirector hands the relaying of a session to the kernel: a BPF
// sockhash holds both of its sockets, and a stream-verdict program sends
// what one socket receives straight out of the other (sockmap), so that
// a query and its result cross the proxy without waking it.
//
// Two sockhashes: peers, where each socket's key leads to the other
// socket of its session, and members, which runs the program on the
// sockets it holds. A session's sockets enter peers first, so that
// neither runs the program before its peer can be found.
type redirector struct {
	peers, members, prog int
}

// Verdicts, and the jump to the program's drop branch (from insn 2 to 24).
const (
	skDrop     = 0
	skPass     = 1
	jumpToDrop = 24 - 3
)

// BPF helper number of bpf_sk_redirect_hash (include/uapi/linux/bpf.h).
const bpfFuncSkRedirectHash = 72

// keyLen is the length of a sockhash key: the receiving socket's local
// and remote IPv4 addresses and ports, as the program reads them from
// the __sk_buff.
const keyLen = 16

// Offsets of the fields of struct __sk_buff the program reads.
const (
	skbLen        = 0
	skbRemoteIP4  = 92
	skbLocalIP4   = 96
	skbRemotePort = 132
	skbLocalPort  = 136
)

// verdictProg returns the program: build the receiving socket's key on
// the stack, redirect to the socket stored under it, and pass the data
// to the receiving socket itself if there is none.
func verdictProg(mapFD int) []byte {
	type insn struct {
		code     uint8
		dst, src uint8
		off      int16
		imm      int32
	}
	prog := []insn{
		{code: 0xbf, dst: 6, src: 1},                     // r6 = r1 (ctx)
		{code: 0x61, dst: 2, src: 6, off: skbLen},        // r2 = ctx->len
		{code: 0x15, dst: 2, off: jumpToDrop, imm: 0},    // if r2 == 0 goto drop
		{code: 0x61, dst: 2, src: 6, off: skbLocalIP4},   // r2 = ctx->local_ip4
		{code: 0x63, dst: 10, src: 2, off: -16},          // key[0] = r2
		{code: 0x61, dst: 2, src: 6, off: skbRemoteIP4},  // r2 = ctx->remote_ip4
		{code: 0x63, dst: 10, src: 2, off: -12},          // key[1] = r2
		{code: 0x61, dst: 2, src: 6, off: skbLocalPort},  // r2 = ctx->local_port
		{code: 0x63, dst: 10, src: 2, off: -8},           // key[2] = r2
		{code: 0x61, dst: 2, src: 6, off: skbRemotePort}, // r2 = ctx->remote_port
		// Some kernels shift the port into the high half: fold it down.
		{code: 0xbf, dst: 3, src: 2},                                         // r3 = r2
		{code: 0x77, dst: 3, imm: 16},                                        // r3 >>= 16
		{code: 0x4f, dst: 2, src: 3},                                         // r2 |= r3
		{code: 0x57, dst: 2, imm: 0xffff},                                    // r2 &= 0xffff
		{code: 0x63, dst: 10, src: 2, off: -4},                               // key[3] = r2
		{code: 0xbf, dst: 1, src: 6},                                         // r1 = ctx
		{code: 0x18, dst: 2, src: unix.BPF_PSEUDO_MAP_FD, imm: int32(mapFD)}, // r2 = map
		{},                                       // (second half of the 64-bit load)
		{code: 0xbf, dst: 3, src: 10},            // r3 = fp
		{code: 0x07, dst: 3, imm: -16},           // r3 += -16 (&key)
		{code: 0xb7, dst: 4, imm: 0},             // r4 = 0 (flags: egress)
		{code: 0x85, imm: bpfFuncSkRedirectHash}, // call bpf_sk_redirect_hash
		{code: 0xb7, dst: 0, imm: skPass},        // r0 = SK_PASS
		{code: 0x95},                             // exit
		// drop: an empty segment (a FIN). Redirected, the worker would
		// write nothing and take that for a broken pipe.
		{code: 0xb7, dst: 0, imm: skDrop}, // r0 = SK_DROP
		{code: 0x95},                      // exit
	}
	b := make([]byte, 0, 8*len(prog))
	for _, i := range prog {
		b = append(b, i.code, i.dst|i.src<<4)
		b = binary.LittleEndian.AppendUint16(b, uint16(i.off))
		b = binary.LittleEndian.AppendUint32(b, uint32(i.imm))
	}
	return b
}

func bpf(cmd int, attr unsafe.Pointer, size uintptr) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(attr), size)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// newRedirector creates the sockhash for up to n sockets and attaches
// the program to it.
func newRedirector(n int) (*redirector, error) {
	if unsafe.Sizeof(uintptr(0)) != 8 || binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		return nil, errors.New("the kernel relay is built for 64-bit little-endian machines")
	}
	n = min(max(n, 2), 1<<24)
	peers, err := newSockhash(n)
	if err != nil {
		return nil, err
	}
	members, err := newSockhash(n)
	if err != nil {
		unix.Close(peers)
		return nil, err
	}
	rd := &redirector{peers: peers, members: members, prog: -1}
	insns := verdictProg(peers)
	license := []byte("GPL\x00")
	logBuf := make([]byte, 4096)
	// Pointers stay pointers, so that the runtime adjusts them if the
	// stack moves before the system call.
	progAttr := struct {
		typ, insnCnt       uint32
		insns, license     unsafe.Pointer
		logLevel, logSize  uint32
		logBuf             unsafe.Pointer
		kernVersion, flags uint32
		name               [16]byte
		ifindex            uint32
		expectedAttachType uint32
	}{
		typ:      unix.BPF_PROG_TYPE_SK_SKB,
		insnCnt:  uint32(len(insns) / 8),
		insns:    unsafe.Pointer(&insns[0]),
		license:  unsafe.Pointer(&license[0]),
		logLevel: 1,
		logSize:  uint32(len(logBuf)),
		logBuf:   unsafe.Pointer(&logBuf[0]),
	}
	copy(progAttr.name[:], "hamr_relay")
	if rd.prog, err = bpf(unix.BPF_PROG_LOAD, unsafe.Pointer(&progAttr), unsafe.Sizeof(progAttr)); err != nil {
		rd.close()
		return nil, fmt.Errorf("bpf prog_load: %w: %s", err, unix.ByteSliceToString(logBuf))
	}
	attach := struct {
		target, prog, typ uint32
	}{target: uint32(members), prog: uint32(rd.prog), typ: unix.BPF_SK_SKB_VERDICT}
	if _, err := bpf(unix.BPF_PROG_ATTACH, unsafe.Pointer(&attach), unsafe.Sizeof(attach)); err != nil {
		rd.close()
		return nil, fmt.Errorf("bpf prog_attach: %w", err)
	}
	return rd, nil
}

// newSockhash creates a sockhash for up to n sockets.
func newSockhash(n int) (int, error) {
	attr := struct {
		typ, keySize, valueSize, maxEntries uint32
	}{typ: unix.BPF_MAP_TYPE_SOCKHASH, keySize: keyLen, valueSize: 4, maxEntries: uint32(n)}
	fd, err := bpf(unix.BPF_MAP_CREATE, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return -1, fmt.Errorf("bpf map_create sockhash: %w", err)
	}
	return fd, nil
}

// close releases the map and the program. Sockets still in the map
// leave it when they close.
func (r *redirector) close() {
	if r.prog >= 0 {
		unix.Close(r.prog)
	}
	unix.Close(r.members)
	unix.Close(r.peers)
}

// A sockKey is a socket's key in the sockhash: its local and remote
// IPv4 addresses and ports, laid out as the program builds it from an
// __sk_buff received on that socket.
type sockKey [keyLen]byte

// keyOf returns fd's key; ok is false unless fd is a connected IPv4
// socket.
func keyOf(fd int) (k sockKey, ok bool) {
	la, err := unix.Getsockname(fd)
	if err != nil {
		return k, false
	}
	ra, err := unix.Getpeername(fd)
	if err != nil {
		return k, false
	}
	l4, ok1 := la.(*unix.SockaddrInet4)
	r4, ok2 := ra.(*unix.SockaddrInet4)
	if !ok1 || !ok2 {
		return k, false
	}
	copy(k[0:4], l4.Addr[:])
	copy(k[4:8], r4.Addr[:])
	binary.NativeEndian.PutUint32(k[8:12], uint32(l4.Port)) // host order
	binary.BigEndian.PutUint16(k[12:14], uint16(r4.Port))   // network order, low half
	return k, true
}

// mapUpdate stores socket fd under key k in the sockhash m.
func mapUpdate(m int, k *sockKey, fd int) error {
	v := uint32(fd)
	attr := struct {
		m, _       uint32
		key, value unsafe.Pointer
		flags      uint64
	}{m: uint32(m), key: unsafe.Pointer(k), value: unsafe.Pointer(&v)}
	if _, err := bpf(unix.BPF_MAP_UPDATE_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); err != nil {
		return os.NewSyscallError("bpf map_update_elem", err)
	}
	return nil
}

// mapDelete removes key k from the sockhash m.
func mapDelete(m int, k *sockKey) {
	attr := struct {
		m, _ uint32
		key  unsafe.Pointer
	}{m: uint32(m), key: unsafe.Pointer(k)}
	bpf(unix.BPF_MAP_DELETE_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
}

// kstate is what a session relayed by the kernel keeps, by direction.
type kstate struct {
	counted [2]uint64 // bytes added to the counters
	final   [2]uint64 // bytes written when the direction ended
	wait    [2]int64  // next drain check's delay, while the direction waits
}

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
// kernel moves do not wake the loop.
const kernelEvents = unix.EPOLLRDHUP | unix.EPOLLET

// joinAfter is how many replies a session gets from its server before it
// is handed to the kernel. A reply is what the server sends after the
// client has sent something: the greeting does not count, the answer to
// the login does, and a large result counts once however many reads it
// takes. A client that connects for one query and leaves costs less
// relayed by the loop than handed over; pooled connections and long
// sessions are handed over. Tests set 0: at the server's first bytes.
var joinAfter uint8 = 3

// maybeJoin hands s to the kernel once it has had joinAfter replies and
// the loop holds none of its bytes. It reports whether s is open.
func (l *loop) maybeJoin(s *session) bool {
	if s.replies > joinAfter {
		return true // the kernel could not take s
	}
	// A server that goes on sending (a large result, a dump) is moving
	// bulk data: the loop splices it, and the kernel relay would queue
	// what a slow client has not read yet. Such a session is handed over
	// at its next reply, if it is quiet then.
	asked := s.c2s.total + s.c2s.n
	fresh := asked != s.asked
	s.asked = asked
	if !fresh && joinAfter > 0 {
		return true
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
	steps := []struct {
		m  int
		k  *sockKey
		fd int
	}{
		{rd.peers, &ck, s.sfd},
		{rd.peers, &sk, s.cfd},
		{rd.members, &ck, s.cfd},
		{rd.members, &sk, s.sfd},
	}
	for i, st := range steps {
		if err := mapUpdate(st.m, st.k, st.fd); err != nil {
			if i < 3 {
				// Only the peers map holds them yet, and it runs nothing.
				for _, done := range steps[:i] {
					mapDelete(done.m, done.k)
				}
				return joinRefused
			}
			// The client socket runs the program already: what it has
			// redirected waits in the kernel, and taking the socket
			// out would drop it. End the session rather than lose bytes.
			l.r.log.Warn("client closed: handing its session to the kernel failed halfway", "client", peer(s.cfd), "err", err)
			l.closeSession(s)
			return joinBroken
		}
	}
	s.k = &kstate{counted: [2]uint64{uint64(s.c2s.total), uint64(s.s2c.total)}}
	// Bytes that arrived before a socket ran the program wait in it for
	// the next segment: setting SO_RCVLOWAT has TCP run it now.
	rawSetsockoptInt(s.sfd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
	rawSetsockoptInt(s.cfd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
	return joined
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
// kernel relays: the end of one direction, or an error.
func (l *loop) kernelEvent(s *session, fd int, ev uint32) {
	if s.killed() || ev&unix.EPOLLERR != 0 {
		l.closeSession(s)
		return
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) == 0 {
		return
	}
	dir := c2s
	if fd == s.sfd {
		dir = s2c
	}
	if s.flow(dir).eof || s.k.wait[dir] != 0 {
		return // ended, or waiting for the kernel already
	}
	l.kernelEOF(s, dir)
}

// Delays between checks of a direction that ended while the kernel
// still held some of its bytes.
const (
	firstDrainWait = int64(50 * time.Microsecond)
	maxDrainWait   = int64(100 * time.Millisecond)
)

// kernelEOF passes the end of direction dir on to its destination once
// the kernel has written every byte the source received: a half-close
// must not overtake them. Until then it checks again after a growing
// delay (the kernel's worker usually needs microseconds; a destination
// that does not read holds it longer).
func (l *loop) kernelEOF(s *session, dir int) {
	f := s.flow(dir)
	recv, ok1 := received(f.src)
	recv = max(recv, 1) - 1 // the FIN
	if out, ok2 := s.written(dir); ok1 && ok2 && out < recv {
		w := &s.k.wait[dir]
		*w = min(max(2**w, firstDrainWait), maxDrainWait)
		l.drains = append(l.drains, drainTimer{at: l.now + *w, s: s, dir: dir})
		return
	}
	s.k.wait[dir] = 0
	s.k.final[dir] = recv
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

// drainTimer is the next check of a direction waiting for the kernel.
type drainTimer struct {
	at  int64
	s   *session
	dir int
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
		if t.s.state == stateOpen && t.s.k != nil {
			l.kernelEOF(t.s, t.dir)
		}
	}
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

// countWait bounds how long a scrape waits for the loops to count.
const countWait = time.Second

// countKernelSessions has each of loops count the bytes its open kernel
// sessions moved, and waits for them (at most countWait).
func countKernelSessions(loops []*loop) {
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
