package proxy

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loops' system calls never block: their sockets, pipes and eventfds
// are non-blocking, and epoll_wait is called with a zero timeout. So they
// are made without the runtime's system-call bookkeeping (entersyscall
// and exitsyscall), which exists for calls that may block. With it, the
// runtime's monitor thread saw a loop's P in a system call whenever the
// kernel descheduled the loop for a moment inside one (a write(2) on
// loopback wakes the reader, which may preempt the writer), took the P
// away, and, having found something to do, went on waking every 20 µs
// to look again: 3,000 wake-ups a second, each a context switch on a
// busy machine. Without it, the monitor backs off to its 10 ms sleep.
//
// These wrappers return the errno itself, so that callers can compare
// errors with ==, as they do with x/sys/unix's.

// rawRead is read(2).
func rawRead(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawWrite is write(2).
func rawWrite(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawSplice is splice(2) between descriptors, without offsets.
func rawSplice(in, out, n, flags int) (int, error) {
	m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), uintptr(flags))
	if e != 0 {
		return 0, e
	}
	return int(m), nil
}

// rawHarvest is epoll_pwait(2) with a zero timeout: the events ready now.
func rawHarvest(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawEpollCtl is epoll_ctl(2).
func rawEpollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// rawAccept4 is accept4(2) without the peer's address, which the proxy
// does not need (unix.Accept4 would decode it, with an extra
// getsockopt(2) per client), non-blocking and close-on-exec.
func rawAccept4(fd int) (int, error) {
	nfd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(nfd), nil
}

// rawSocket is socket(2) for a non-blocking, close-on-exec TCP socket.
func rawSocket(family int) (int, error) {
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

// rawSetsockoptInt is setsockopt(2) with an int value.
func rawSetsockoptInt(fd, level, opt, v int) error {
	v32 := int32(v)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v32)), 4, 0)
	if e != 0 {
		return e
	}
	return nil
}

// rawConnect is connect(2) on a non-blocking socket.
func rawConnect(fd int, sa *rawSockaddr) error {
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa.b)), uintptr(sa.n))
	if e != 0 {
		return e
	}
	return nil
}

// rawShutdown is shutdown(2).
func rawShutdown(fd, how int) error {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	if e != 0 {
		return e
	}
	return nil
}

// rawClose is close(2). Closing a TCP socket does not block unless
// SO_LINGER is set, which the proxy never does.
func rawClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// rawSockaddr is an IP socket address in the kernel's form, built once
// per destination: connect(2) then needs neither a conversion nor an
// allocation, and the loops can share it.
type rawSockaddr struct {
	b [unix.SizeofSockaddrInet6]byte
	n int
}

// toRawSockaddr converts sa, an IPv4 or IPv6 address.
func toRawSockaddr(sa unix.Sockaddr) rawSockaddr {
	var r rawSockaddr
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		binary.NativeEndian.PutUint16(r.b[0:], unix.AF_INET)
		binary.BigEndian.PutUint16(r.b[2:], uint16(a.Port))
		copy(r.b[4:8], a.Addr[:])
		r.n = unix.SizeofSockaddrInet4
	case *unix.SockaddrInet6:
		binary.NativeEndian.PutUint16(r.b[0:], unix.AF_INET6)
		binary.BigEndian.PutUint16(r.b[2:], uint16(a.Port))
		copy(r.b[8:24], a.Addr[:]) // after the flow label, 0
		binary.NativeEndian.PutUint32(r.b[24:], a.ZoneId)
		r.n = unix.SizeofSockaddrInet6
	}
	return r
}
