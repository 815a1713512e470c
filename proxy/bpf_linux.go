package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
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
//
// The kernel applies no flow control across a redirect: a destination
// that reads slower than the source sends would have the kernel queue
// the difference without bound. So each socket has a window (see
// relayWindow), kept in two hash maps by the same key: state, which
// only the program writes (bytes redirected, bytes held), and ctl,
// which only the loop writes (bytes allowed, bytes it took over). Past
// its window the program stops redirecting: it holds the segment in the
// receiving socket, where it counts against the receive buffer, so TCP
// closes the sender's window, and tells the loop through the ring
// buffer. The loop waits until the kernel has written what it
// redirected, relays what is held itself, and then opens a new window
// (see overflow in kernel_linux.go).
type redirector struct {
	peers, members int
	state, ctl     int
	prog           int
	ring           *ring
}

// A relayState is a socket's value in the state map.
type relayState struct {
	sent uint64 // bytes redirected to the peer
	held uint64 // bytes held in the socket for the loop
	told uint64 // the soft limit last reported to the loop
	fd   uint32 // the socket, for the ring's record
	tag  uint32 // its session's tag
	loop uint32 // the index of the loop that owns it
	_    uint32
}

// A relayCtl is a socket's value in the ctl map.
type relayCtl struct {
	allow uint64 // sent may grow up to allow
	taken uint64 // held bytes the loop has read and written on
	soft  uint64 // past it, the program asks the loop for more room
}

// Offsets in relayState and relayCtl, for the program.
const (
	stSent   = 0
	stHeld   = 8
	stTold   = 16
	stRecord = 24 // fd, tag, loop: the ring's record
	recLen   = 16
	ctlAllow = 0
	ctlTaken = 8
	ctlSoft  = 16
)

// Verdicts.
const (
	skDrop = 0
	skPass = 1
)

// BPF helper numbers (include/uapi/linux/bpf.h).
const (
	bpfFuncMapLookupElem  = 1
	bpfFuncSkRedirectHash = 72
	bpfFuncRingbufOutput  = 130
	bpfRingbufForceWakeup = 2
	bpfFNoPrealloc        = 1
	bpfMapTypeRingbuf     = 27
	ringBusyBit           = 1 << 31
	ringDiscardBit        = 1 << 30
	ringHeaderLen         = 8
)

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

// An insn is one BPF instruction; jump names the label a jump goes to.
type insn struct {
	code     uint8
	dst, src uint8
	off      int16
	imm      int32
	jump     string
	label    string // names this instruction
}

// ldMap loads the map fd into register dst (a two-slot instruction).
func ldMap(dst uint8, fd int) []insn {
	return []insn{{code: 0x18, dst: dst, src: unix.BPF_PSEUDO_MAP_FD, imm: int32(fd)}, {}}
}

// assemble resolves the jumps and encodes the program.
func assemble(prog []insn) ([]byte, error) {
	at := make(map[string]int)
	for i, in := range prog {
		if in.label != "" {
			at[in.label] = i
		}
	}
	b := make([]byte, 0, 8*len(prog))
	for i, in := range prog {
		if in.jump != "" {
			to, ok := at[in.jump]
			if !ok {
				return nil, fmt.Errorf("bpf: no label %q", in.jump)
			}
			in.off = int16(to - i - 1)
		}
		b = append(b, in.code, in.dst|in.src<<4)
		b = binary.LittleEndian.AppendUint16(b, uint16(in.off))
		b = binary.LittleEndian.AppendUint32(b, uint32(in.imm))
	}
	return b, nil
}

// verdictProg returns the program: build the receiving socket's key on
// the stack; while the socket's window allows it and nothing is held,
// redirect the segment to the socket stored under the key in peers;
// otherwise hold it in the receiving socket, telling the loop through
// the ring when the window has just run out.
func (r *redirector) verdictProg() ([]byte, error) {
	var p []insn
	add := func(is ...insn) { p = append(p, is...) }
	add(
		insn{code: 0xbf, dst: 6, src: 1},                   // r6 = ctx
		insn{code: 0x61, dst: 9, src: 6, off: skbLen},      // r9 = ctx->len
		insn{code: 0x15, dst: 9, imm: 0, jump: "drop"},     // if r9 == 0 goto drop
		insn{code: 0x61, dst: 2, src: 6, off: skbLocalIP4}, // key[0] = local_ip4
		insn{code: 0x63, dst: 10, src: 2, off: -16},
		insn{code: 0x61, dst: 2, src: 6, off: skbRemoteIP4}, // key[1] = remote_ip4
		insn{code: 0x63, dst: 10, src: 2, off: -12},
		insn{code: 0x61, dst: 2, src: 6, off: skbLocalPort}, // key[2] = local_port
		insn{code: 0x63, dst: 10, src: 2, off: -8},
		insn{code: 0x61, dst: 2, src: 6, off: skbRemotePort}, // r2 = remote_port
		// Some kernels shift the port into the high half: fold it down.
		insn{code: 0xbf, dst: 3, src: 2},           // r3 = r2
		insn{code: 0x77, dst: 3, imm: 16},          // r3 >>= 16
		insn{code: 0x4f, dst: 2, src: 3},           // r2 |= r3
		insn{code: 0x57, dst: 2, imm: 0xffff},      // r2 &= 0xffff
		insn{code: 0x63, dst: 10, src: 2, off: -4}, // key[3] = r2
	)
	lookup := func(m int, into uint8) {
		add(ldMap(1, m)...)
		add(
			insn{code: 0xbf, dst: 2, src: 10},              // r2 = fp
			insn{code: 0x07, dst: 2, imm: -16},             // r2 += -16 (&key)
			insn{code: 0x85, imm: bpfFuncMapLookupElem},    // r0 = lookup(map, &key)
			insn{code: 0x15, dst: 0, imm: 0, jump: "pass"}, // not relayed: leave it
			insn{code: 0xbf, dst: into, src: 0},
		)
	}
	lookup(r.state, 7) // r7 = &state
	lookup(r.ctl, 8)   // r8 = &ctl
	add(
		insn{code: 0x79, dst: 1, src: 7, off: stHeld},   // r1 = held
		insn{code: 0x79, dst: 2, src: 8, off: ctlTaken}, // r2 = taken
		insn{code: 0x2d, dst: 1, src: 2, jump: "hold"},  // bytes held before it: hold it too
		insn{code: 0x79, dst: 1, src: 7, off: stSent},   // r1 = sent
		insn{code: 0x0f, dst: 1, src: 9},                // r1 += len
		insn{code: 0x79, dst: 2, src: 8, off: ctlAllow}, // r2 = allow
		insn{code: 0x2d, dst: 1, src: 2, jump: "over"},  // past the window
		insn{code: 0x79, dst: 2, src: 8, off: ctlSoft},  // r2 = soft
		insn{code: 0x2d, dst: 1, src: 2, jump: "soft"},  // past the soft limit
		insn{code: 0x79, dst: 1, src: 7, off: stSent, label: "redirect"},
		insn{code: 0x0f, dst: 1, src: 9},              // sent += len
		insn{code: 0x7b, dst: 7, src: 1, off: stSent}, //
		insn{code: 0xbf, dst: 1, src: 6},              // r1 = ctx
	)
	add(ldMap(2, r.peers)...) // r2 = peers
	add(
		insn{code: 0xbf, dst: 3, src: 10},            // r3 = fp
		insn{code: 0x07, dst: 3, imm: -16},           // r3 += -16 (&key)
		insn{code: 0xb7, dst: 4, imm: 0},             // r4 = 0 (flags: egress)
		insn{code: 0x85, imm: bpfFuncSkRedirectHash}, // bpf_sk_redirect_hash
		insn{code: 0xb7, dst: 0, imm: skPass},
		insn{code: 0x95},
		// soft: ask the loop for more room, once per soft limit, and
		// redirect meanwhile.
		insn{code: 0x79, dst: 1, src: 8, off: ctlSoft, label: "soft"}, // r1 = soft
		insn{code: 0x79, dst: 2, src: 7, off: stTold},                 // r2 = told
		insn{code: 0x1d, dst: 1, src: 2, jump: "redirect"},            // told already
		insn{code: 0x7b, dst: 7, src: 1, off: stTold},                 // told = soft
	)
	r.tell(add)
	add(insn{code: 0x05, jump: "redirect"})
	// over: the window is used up. Hold the segment and tell the loop.
	r.tell(add)
	p[len(p)-tellInsns].label = "over"
	add(
		// The ring is full (it should never be): relay rather than
		// hold bytes nobody would come for.
		insn{code: 0x55, dst: 0, imm: 0, jump: "redirect"},
		insn{code: 0x79, dst: 1, src: 7, off: stHeld, label: "hold"},
		insn{code: 0x0f, dst: 1, src: 9},              // held += len
		insn{code: 0x7b, dst: 7, src: 1, off: stHeld}, //
		insn{code: 0xb7, dst: 0, imm: skPass, label: "pass"},
		insn{code: 0x95},
		// An empty segment (a FIN): redirected, the worker would write
		// nothing and take that for a broken pipe.
		insn{code: 0xb7, dst: 0, imm: skDrop, label: "drop"},
		insn{code: 0x95},
	)
	return assemble(p)
}

// tellInsns is the length of what tell adds.
const tellInsns = 7

// tell adds the instructions that write the socket's record (r7 points
// to its state) to the ring; r0 is 0 when it was written.
func (r *redirector) tell(add func(...insn)) {
	add(ldMap(1, r.ring.fd)...)
	add(
		insn{code: 0xbf, dst: 2, src: 7},                     // r2 = &state
		insn{code: 0x07, dst: 2, imm: stRecord},              // r2 += record
		insn{code: 0xb7, dst: 3, imm: recLen},                // r3 = len
		insn{code: 0xb7, dst: 4, imm: bpfRingbufForceWakeup}, // r4 = flags
		insn{code: 0x85, imm: bpfFuncRingbufOutput},          // output
	)
}

func bpf(cmd int, attr unsafe.Pointer, size uintptr) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(attr), size)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// newRedirector creates the maps for up to n sockets, attaches the
// program, and has loop l read the ring.
func newRedirector(n int, l *loop) (*redirector, error) {
	if unsafe.Sizeof(uintptr(0)) != 8 || binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		return nil, errors.New("the kernel relay is built for 64-bit little-endian machines")
	}
	n = min(max(n, 2), 1<<24)
	rd := &redirector{peers: -1, members: -1, state: -1, ctl: -1, prog: -1}
	var err error
	for _, m := range []struct {
		fd                    *int
		typ, valueSize, flags uint32
	}{
		{&rd.peers, unix.BPF_MAP_TYPE_SOCKHASH, 4, 0},
		{&rd.members, unix.BPF_MAP_TYPE_SOCKHASH, 4, 0},
		// Not preallocated: an element the loop replaces is freed only
		// once no program can still be reading it.
		{&rd.state, unix.BPF_MAP_TYPE_HASH, uint32(unsafe.Sizeof(relayState{})), bpfFNoPrealloc},
		{&rd.ctl, unix.BPF_MAP_TYPE_HASH, uint32(unsafe.Sizeof(relayCtl{})), bpfFNoPrealloc},
	} {
		if *m.fd, err = newMap(m.typ, keyLen, m.valueSize, uint32(n), m.flags); err != nil {
			rd.close()
			return nil, err
		}
	}
	// A socket has at most two records waiting (one for its soft
	// limit, one for its window): room for all of them.
	if rd.ring, err = newRing(2 * uint64(n) * (ringHeaderLen + recLen)); err != nil {
		rd.close()
		return nil, err
	}
	insns, err := rd.verdictProg()
	if err != nil {
		rd.close()
		return nil, err
	}
	license := []byte("GPL\x00")
	logBuf := make([]byte, 16<<10)
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
	}{target: uint32(rd.members), prog: uint32(rd.prog), typ: unix.BPF_SK_SKB_VERDICT}
	if _, err := bpf(unix.BPF_PROG_ATTACH, unsafe.Pointer(&attach), unsafe.Sizeof(attach)); err != nil {
		rd.close()
		return nil, fmt.Errorf("bpf prog_attach: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(rd.ring.fd), Pad: tagRing}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, rd.ring.fd, &ev); err != nil {
		rd.close()
		return nil, fmt.Errorf("epoll_ctl ring buffer: %w", err)
	}
	return rd, nil
}

// newMap creates a BPF map.
func newMap(typ, keySize, valueSize, n, flags uint32) (int, error) {
	attr := struct {
		typ, keySize, valueSize, maxEntries, flags uint32
	}{typ, keySize, valueSize, n, flags}
	fd, err := bpf(unix.BPF_MAP_CREATE, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return -1, fmt.Errorf("bpf map_create (type %d): %w", typ, err)
	}
	return fd, nil
}

// close releases the maps and the program. Sockets still in the maps
// leave them when they close.
func (r *redirector) close() {
	for _, fd := range []int{r.prog, r.members, r.peers, r.state, r.ctl} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	if r.ring != nil {
		r.ring.close()
	}
}

// A sockKey is a socket's key in the maps: its local and remote IPv4
// addresses and ports, laid out as the program builds it from an
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

// mapUpdate stores the value at v under key k in map m.
func mapUpdate(m int, k *sockKey, v unsafe.Pointer) error {
	attr := struct {
		m, _       uint32
		key, value unsafe.Pointer
		flags      uint64
	}{m: uint32(m), key: unsafe.Pointer(k), value: v}
	if _, err := bpf(unix.BPF_MAP_UPDATE_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); err != nil {
		return os.NewSyscallError("bpf map_update_elem", err)
	}
	return nil
}

// mapLookup copies the value under key k in map m to v.
func mapLookup(m int, k *sockKey, v unsafe.Pointer) error {
	attr := struct {
		m, _       uint32
		key, value unsafe.Pointer
		flags      uint64
	}{m: uint32(m), key: unsafe.Pointer(k), value: v}
	if _, err := bpf(unix.BPF_MAP_LOOKUP_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); err != nil {
		return os.NewSyscallError("bpf map_lookup_elem", err)
	}
	return nil
}

// mapDelete removes key k from map m.
func mapDelete(m int, k *sockKey) {
	attr := struct {
		m, _ uint32
		key  unsafe.Pointer
	}{m: uint32(m), key: unsafe.Pointer(k)}
	bpf(unix.BPF_MAP_DELETE_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
}

// A ring is a BPF ring buffer, mapped for reading: the program writes
// records, the loop that polls fd reads them.
type ring struct {
	fd   int
	cons []byte // the consumer position's page (read-write)
	prod []byte // the producer position's page, then the data mapped twice
	data []byte // prod's data
	mask uint64
}

// newRing creates a ring buffer of at least size bytes.
func newRing(size uint64) (*ring, error) {
	page := uint64(os.Getpagesize())
	n := page
	for n < size {
		n <<= 1
	}
	fd, err := newMap(bpfMapTypeRingbuf, 0, 0, uint32(n), 0)
	if err != nil {
		return nil, err
	}
	r := &ring{fd: fd, mask: n - 1}
	if r.cons, err = unix.Mmap(fd, 0, int(page), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		r.close()
		return nil, fmt.Errorf("mmap ring buffer: %w", err)
	}
	// The kernel maps the data twice in a row, so that a record that
	// wraps around reads as one slice.
	if r.prod, err = unix.Mmap(fd, int64(page), int(page+2*n), unix.PROT_READ, unix.MAP_SHARED); err != nil {
		r.close()
		return nil, fmt.Errorf("mmap ring buffer: %w", err)
	}
	r.data = r.prod[page:]
	return r, nil
}

// read passes each record written since the last read to fn, and frees
// it.
func (r *ring) read(fn func(rec []byte)) {
	consPos := (*uint64)(unsafe.Pointer(&r.cons[0]))
	prodPos := (*uint64)(unsafe.Pointer(&r.prod[0]))
	c := atomic.LoadUint64(consPos)
	for p := atomic.LoadUint64(prodPos); c < p; {
		h := atomic.LoadUint32((*uint32)(unsafe.Pointer(&r.data[c&r.mask])))
		if h&ringBusyBit != 0 {
			break // still being written: the commit wakes the reader again
		}
		n := uint64(h &^ (ringBusyBit | ringDiscardBit))
		if h&ringDiscardBit == 0 {
			at := (c + ringHeaderLen) & r.mask
			fn(r.data[at : at+n])
		}
		c += (n + ringHeaderLen + 7) &^ 7
		atomic.StoreUint64(consPos, c)
	}
}

func (r *ring) close() {
	for _, b := range [][]byte{r.cons, r.prod} {
		if b != nil {
			unix.Munmap(b)
		}
	}
	unix.Close(r.fd)
}
