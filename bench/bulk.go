package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Bulk protocol: the client sends one op byte and a big-endian uint64
// length. For opUpload it then sends that many bytes and the server answers
// one byte once it has read them all. For opDownload the server sends that
// many bytes and the client closes.
const (
	opUpload   = 'U'
	opDownload = 'D'
	bulkBuf    = 1 << 20
)

// bulkServer is the sink/source the bulk workload talks to.
type bulkServer struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	conn map[net.Conn]struct{}
}

func startBulkServer() (*bulkServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bulk server: %w", err)
	}
	s := &bulkServer{ln: ln, conn: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *bulkServer) addr() string { return s.ln.Addr().String() }

func (s *bulkServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.mu.Lock()
		s.conn[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conn, c)
				s.mu.Unlock()
				c.Close()
			}()
			_ = handleBulk(c)
		}()
	}
}

func handleBulk(c net.Conn) error {
	var hdr [9]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return err // health checks and readiness probes close at once
	}
	n := int64(binary.BigEndian.Uint64(hdr[1:]))
	buf := make([]byte, bulkBuf)
	switch hdr[0] {
	case opUpload:
		if err := readN(c, buf, n); err != nil {
			return err
		}
		_, err := c.Write([]byte{1})
		return err
	case opDownload:
		if err := writeN(c, buf, n); err != nil {
			return err
		}
		_, _ = c.Read(buf[:1]) // wait for the client to close
		return nil
	}
	return fmt.Errorf("bad op %q", hdr[0])
}

func readN(r io.Reader, buf []byte, n int64) error {
	for n > 0 {
		b := buf
		if int64(len(b)) > n {
			b = b[:n]
		}
		k, err := r.Read(b)
		n -= int64(k)
		if err != nil {
			if n == 0 {
				return nil
			}
			return err
		}
	}
	return nil
}

func writeN(w io.Writer, buf []byte, n int64) error {
	for n > 0 {
		b := buf
		if int64(len(b)) > n {
			b = b[:n]
		}
		k, err := w.Write(b)
		n -= int64(k)
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *bulkServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conn {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// bulkTransfer moves total bytes over streams parallel connections to addr
// in direction op and returns the elapsed time. Each connection gets a
// deadline so a stuck proxy cannot hang the suite.
func bulkTransfer(ctx context.Context, addr string, op byte, streams int, total int64) (time.Duration, error) {
	per := total / int64(streams)
	conns := make([]net.Conn, 0, streams)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	d := net.Dialer{Timeout: 5 * time.Second}
	for range streams {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return 0, fmt.Errorf("dial %s: %w", addr, err)
		}
		conns = append(conns, c)
	}
	// At no less than 100 Mbit/s per GB the whole transfer takes < 90 s.
	deadline := time.Now().Add(30*time.Second + time.Duration(total/(12<<20))*time.Second)
	start := time.Now()
	errs := make(chan error, streams)
	for _, c := range conns {
		go func() {
			c.SetDeadline(deadline)
			buf := make([]byte, bulkBuf)
			var hdr [9]byte
			hdr[0] = op
			binary.BigEndian.PutUint64(hdr[1:], uint64(per))
			if _, err := c.Write(hdr[:]); err != nil {
				errs <- err
				return
			}
			if op == opUpload {
				if err := writeN(c, buf, per); err != nil {
					errs <- err
					return
				}
				_, err := io.ReadFull(c, buf[:1])
				errs <- err
				return
			}
			errs <- readN(c, buf, per)
		}()
	}
	var first error
	for range conns {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	elapsed := time.Since(start)
	if first != nil {
		return 0, fmt.Errorf("bulk %c x%d via %s: %w", op, streams, addr, first)
	}
	return elapsed, nil
}
