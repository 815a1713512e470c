package proxy

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// A flow moves one direction of a session, from src to dst. It adapts to
// the traffic:
//
//   - idle: it holds nothing; its socket waits in the loop's epoll;
//   - small packets (queries, results): one read(2) into the loop's
//     buffer and one write(2) out. Sockets are edge-triggered, so a read
//     that returns less than the buffer has emptied the socket and the
//     flow waits for the next edge without the read(2) that would return
//     EAGAIN; only an event that also reports the peer's FIN or an error
//     makes the flow read on until EAGAIN, since no later edge would
//     report them;
//   - bulk: once a read fills the whole buffer, the flow switches to
//     splice(2) through a pooled pipe, so the bytes never enter user
//     space; the pipe goes back to the pool as soon as the source has
//     nothing more to give. A wake-up that brings less than a buffer's
//     worth switches back to read/write.
//
// When dst cannot take more, the flow keeps what it holds (the rest of a
// write, or the pipe) and stops reading, so that TCP flow control pushes
// back on the sender; dst's next writable edge resumes it.
const (
	relayBufSize = 16 << 10 // read buffer; a full read switches to splice
	pipeSize     = 1 << 20  // requested pipe capacity (F_SETPIPE_SZ)
	maxSplice    = pipeSize // bytes asked of one splice(2) into the pipe
	maxIdlePipes = 16       // pipes kept for reuse; more are closed
	flowBudget   = 16       // reads or splices per wake-up before others get a turn
)

// relayBuf holds the unwritten rest of a read when dst is full. Pooled
// as a pointer to an array so that Get and Put do not allocate.
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

// flow is one direction of a session.
type flow struct {
	src, dst int
	pend     []byte    // read but not yet written to dst
	pbuf     *relayBuf // pend's storage
	pipe     pipeFDs   // bulk mode's pipe, if hasPipe
	inPipe   int       // bytes in the pipe still to drain
	hasPipe  bool
	bulk     bool               // splicing rather than reading
	blocked  bool               // dst is full: wait for its writable edge
	eof      bool               // src ended and dst was shut down for writing
	heard    bool               // src has sent something
	n        int64              // bytes delivered to dst, not yet added to bytes
	total    int64              // bytes delivered to dst and added to bytes
	bytes    prometheus.Counter // hamr_route_bytes_total of this direction
}

// flush adds the bytes delivered since the last flush to f's counter,
// so that the metric moves while a long session lasts.
func (f *flow) flush() {
	if f.n > 0 && f.bytes != nil {
		f.bytes.Add(float64(f.n))
		f.total += f.n
		f.n = 0
	}
}

// errPipeEmpty means the kernel lost track of a pipe's contents; it ends
// the session rather than the process.
var errPipeEmpty = errors.New("splice: pipe unexpectedly empty")

// pump moves what src has to dst. It returns when src has nothing more,
// dst is full, src has ended or the budget is spent (the flow is queued
// to run again). drain makes it read on until EAGAIN, past short reads.
// An error means the session must end.
func (l *loop) pump(s *session, f *flow, drain bool) error {
	first := true // the first splice of this wake-up
	f.blocked = false
	for budget := flowBudget; ; budget-- {
		if f.inPipe > 0 {
			if err := f.drainPipe(); err != nil || f.blocked {
				return err
			}
		}
		if len(f.pend) > 0 {
			n, err := write(f.dst, f.pend)
			if err == unix.EAGAIN {
				f.blocked = true
				return nil
			}
			if err != nil {
				return err
			}
			f.n += int64(n)
			if f.pend = f.pend[n:]; len(f.pend) > 0 {
				continue // most likely EAGAIN next, which arms the writable edge
			}
			bufPool.Put(f.pbuf)
			f.pbuf, f.pend = nil, nil
		}
		if f.hasPipe && !f.bulk {
			putPipe(f.pipe) // the small burst that ended bulk mode is out
			f.hasPipe = false
		}
		if f.eof {
			return nil
		}
		if budget == 0 {
			l.ready = append(l.ready, readyFlow{s: s, f: f})
			return nil
		}
		if f.bulk {
			if !f.hasPipe {
				p, err := getPipe()
				if err != nil {
					f.bulk = false // out of descriptors: read/write will do
					continue
				}
				f.pipe, f.hasPipe = p, true
			}
			n, err := rawSplice(f.src, f.pipe.w, maxSplice, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
			switch err {
			case nil:
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				putPipe(f.pipe) // empty: everything spliced in was drained
				f.hasPipe = false
				return nil
			default:
				return err
			}
			if n == 0 {
				return l.eof(s, f)
			}
			f.heard = true
			f.inPipe = int(n)
			if first && n < relayBufSize {
				f.bulk = false // a small burst: read/write once it is out
			}
			first = false
			continue
		}
		n, err := rawRead(f.src, l.buf)
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return nil
		default:
			return err
		}
		if n == 0 {
			return l.eof(s, f)
		}
		f.heard = true
		w, err := write(f.dst, l.buf[:n])
		if err != nil && err != unix.EAGAIN {
			return err
		}
		f.n += int64(w)
		if w < n {
			f.pbuf = bufPool.Get().(*relayBuf)
			f.pend = f.pbuf[:copy(f.pbuf[:], l.buf[w:n])]
			continue
		}
		if n == len(l.buf) {
			f.bulk = true // more is probably waiting: splice it
			continue
		}
		if !drain {
			return nil // a short read emptied src; its next edge wakes us
		}
	}
}

// drainPipe splices the pipe into dst until it is empty or dst is full.
func (f *flow) drainPipe() error {
	for f.inPipe > 0 {
		n, err := rawSplice(f.pipe.r, f.dst, f.inPipe, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			f.blocked = true
			return nil
		default:
			return err
		}
		if n == 0 {
			return errPipeEmpty
		}
		f.inPipe -= int(n)
		f.n += int64(n)
	}
	return nil
}

// write is write(2) retried on EINTR. EAGAIN comes back as an error,
// with n = 0.
func write(fd int, b []byte) (int, error) {
	for {
		n, err := rawWrite(fd, b)
		if err == unix.EINTR {
			continue
		}
		if n < 0 {
			n = 0
		}
		return n, err
	}
}

// release returns what f holds. A pipe with data left in it (the
// destination failed) is closed rather than pooled.
func (f *flow) release() {
	if f.pbuf != nil {
		bufPool.Put(f.pbuf)
		f.pbuf, f.pend = nil, nil
	}
	if f.hasPipe {
		if f.inPipe > 0 {
			closePipe(f.pipe)
		} else {
			putPipe(f.pipe)
		}
		f.hasPipe, f.inPipe = false, 0
	}
}
