package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The relay moves one direction of a session. It adapts to the traffic:
//
//   - idle: the goroutine is parked on the netpoller (RawConn.Read) holding
//     neither a buffer nor a pipe;
//   - small packets (queries, results): read(2) into a pooled buffer and
//     write(2) out, which for a few hundred bytes is cheaper than two
//     splice(2) calls and a pipe;
//   - bulk: once a read fills the whole buffer, the direction switches to
//     splice(2) through a pooled pipe, so the bytes never enter user
//     space; the pipe goes back to the pool as soon as the source has
//     nothing more to give (EAGAIN). A wake-up that brings less than a
//     buffer's worth switches back to read/write.
const (
	relayBufSize = 16 << 10 // read/write buffer; a full read switches to splice
	pipeSize     = 1 << 20  // requested pipe capacity (F_SETPIPE_SZ)
	maxSplice    = pipeSize // bytes asked of one splice(2) into the pipe
	maxIdlePipes = 16       // pipes kept for reuse; more are closed
)

// relayBuf is a read/write buffer. Pooled as a pointer to an array so that
// Get and Put do not allocate.
type relayBuf = [relayBufSize]byte

var bufPool = sync.Pool{New: func() any { return new(relayBuf) }}

// pipeFDs is a pipe used for splicing: r is its read end, w its write end.
type pipeFDs struct{ r, w int }

// pipePool keeps a few empty pipes. Not a sync.Pool: the GC would drop
// pipes without closing their descriptors.
var pipePool struct {
	mu   sync.Mutex
	free []pipeFDs
}

// getPipe returns an empty pipe from the pool or a new one.
func getPipe() (pipeFDs, error) {
	pipePool.mu.Lock()
	if n := len(pipePool.free); n > 0 {
		p := pipePool.free[n-1]
		pipePool.free = pipePool.free[:n-1]
		pipePool.mu.Unlock()
		return p, nil
	}
	pipePool.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return pipeFDs{}, err
	}
	// A larger pipe means fewer splice calls per megabyte. Best effort:
	// an unprivileged user over fs.pipe-user-pages-soft keeps the default.
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize)
	return pipeFDs{r: fds[0], w: fds[1]}, nil
}

// putPipe returns an empty pipe to the pool, or closes it if the pool is
// full.
func putPipe(p pipeFDs) {
	pipePool.mu.Lock()
	if len(pipePool.free) < maxIdlePipes {
		pipePool.free = append(pipePool.free, p)
		pipePool.mu.Unlock()
		return
	}
	pipePool.mu.Unlock()
	closePipe(p)
}

func closePipe(p pipeFDs) {
	unix.Close(p.r)
	unix.Close(p.w)
}

// relay is one direction of a session: from src to dst. Its callbacks are
// bound once per session (method values), so that the steady state does
// not allocate.
type relay struct {
	s            *session
	src, dst     *net.TCPConn
	srcRC, dstRC syscall.RawConn
	callback     func(fd uintptr) bool // c.step, bound once

	draining bool // callback is drainOnce, else readOnce

	bulk    bool      // splicing rather than reading
	woke    bool      // the next callback is the first after a wait
	buf     *relayBuf // the buffer holding n bytes (read mode)
	pipe    pipeFDs   // the pipe holding n bytes (bulk mode), if hasPipe
	hasPipe bool
	n       int   // bytes read or spliced by the last callback; 0 at EOF
	inPipe  int   // bytes in the pipe still to drain
	err     error // error of the last callback
	written int64 // bytes delivered to dst

	// Idle parking (park.go).
	state    atomic.Int32 // relayRunning or relayParked
	id       uint64       // key in the idle poller while parked
	inEpoll  bool         // src is registered in the poller's epoll
	noPark   bool         // the poller cannot take src: never park
	armed    bool         // src has an idle read deadline set
	activity uint64       // reads with data; seen at arming
	seen     uint64
}

func (c *relay) init(s *session, src, dst *net.TCPConn, srcRC, dstRC syscall.RawConn) {
	c.s = s
	c.src, c.dst = src, dst
	c.srcRC, c.dstRC = srcRC, dstRC
	c.callback = c.step
}

// loop is the direction's goroutine: it relays until the end, or until
// the direction parks (another goroutine takes it up again later).
func (c *relay) loop() {
	n, err, parked := c.run()
	if parked {
		return
	}
	c.s.finish(c, n, err)
}

// run relays until src reaches EOF (nil error) or either side fails, and
// returns the bytes delivered to dst; or it parks the idle direction and
// returns parked.
func (c *relay) run() (written int64, err error, parked bool) {
	c.armed = false
	for {
		if !c.armed && !c.noPark {
			c.src.SetReadDeadline(time.Now().Add(idleAfter))
			c.armed, c.seen = true, c.activity
		}
		if err := c.srcRC.Read(c.callback); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Idle for a while (or busy: re-arm). Holds nothing.
				c.armed = false
				if c.activity == c.seen {
					if c.s.r.idle == nil {
						c.noPark = true
					} else if c.park() {
						return 0, nil, true
					}
				}
				if c.noPark {
					c.src.SetReadDeadline(time.Time{}) // stay on this goroutine
				}
				continue
			}
			c.release()
			return c.written, err, false
		}
		if c.err != nil || c.n == 0 {
			c.release()
			return c.written, c.err, false // c.err is nil at EOF
		}
		c.activity++
		if c.hasPipe {
			c.inPipe = c.n
			c.draining = true
			err := c.dstRC.Write(c.callback)
			c.draining = false
			if err == nil {
				err = c.err
			}
			if err != nil {
				c.release()
				return c.written, err, false
			}
			if !c.bulk { // the burst was small: read/write from now on
				putPipe(c.pipe)
				c.hasPipe = false
			}
			continue // splice again at once; the pipe goes back on EAGAIN
		}
		n, err := c.dst.Write(c.buf[:c.n])
		c.written += int64(n)
		bufPool.Put(c.buf)
		c.buf = nil
		if err != nil {
			return c.written, err, false
		}
	}
}

// step is the RawConn callback: readOnce under srcRC.Read, drainOnce
// under dstRC.Write. One method value per relay, made once.
func (c *relay) step(fd uintptr) bool {
	if c.draining {
		return c.drainOnce(fd)
	}
	return c.readOnce(fd)
}

// readOnce is the RawConn.Read callback: it moves what src has into a
// buffer or, in bulk mode, into a pipe. It returns false, holding nothing,
// when src has nothing (EAGAIN): the runtime then parks until it has.
func (c *relay) readOnce(fd uintptr) bool {
	first := c.woke
	c.woke = false
	if c.bulk {
		if !c.hasPipe {
			p, err := getPipe()
			if err != nil {
				// No pipe (out of descriptors): carry on with read/write.
				c.bulk = false
				return c.readOnce(fd)
			}
			c.pipe, c.hasPipe = p, true
		}
		for {
			n, err := unix.Splice(int(fd), nil, c.pipe.w, nil, maxSplice, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
			switch err {
			case nil:
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				putPipe(c.pipe) // empty: everything spliced in was drained
				c.hasPipe = false
				c.woke = true
				return false
			default:
				c.n, c.err = 0, err
				return true
			}
			c.n, c.err = int(n), nil
			if first && n < relayBufSize {
				// This burst is small: back to read/write after it.
				c.bulk = false
			}
			return true
		}
	}
	if c.buf == nil {
		c.buf = bufPool.Get().(*relayBuf)
	}
	for {
		n, err := unix.Read(int(fd), c.buf[:])
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			bufPool.Put(c.buf)
			c.buf = nil
			c.woke = true
			return false
		default:
			c.n, c.err = 0, err
			return true
		}
		c.n, c.err = n, nil
		if n == len(c.buf) {
			c.bulk = true // more is probably waiting: splice it
		}
		return true
	}
}

// drainOnce is the RawConn.Write callback of bulk mode: it splices the
// pipe into dst, and returns false (wait until writable) on EAGAIN.
func (c *relay) drainOnce(fd uintptr) bool {
	for c.inPipe > 0 {
		n, err := unix.Splice(c.pipe.r, nil, int(fd), nil, c.inPipe, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			c.err = err
			return true
		}
		if n == 0 {
			c.err = errors.New("splice: pipe unexpectedly empty")
			return true
		}
		c.inPipe -= int(n)
		c.written += n
	}
	c.err = nil
	return true
}

// release returns what the relay holds. A pipe with data left in it (the
// destination failed) is closed rather than pooled.
func (c *relay) release() {
	if c.buf != nil {
		bufPool.Put(c.buf)
		c.buf = nil
	}
	if c.hasPipe {
		if c.inPipe > 0 {
			closePipe(c.pipe)
		} else {
			putPipe(c.pipe)
		}
		c.hasPipe, c.inPipe = false, 0
	}
}
