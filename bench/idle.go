package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// idleServer accepts connections, greets each with one byte (as a MySQL
// server sends its handshake first) and then holds it open without reading.
type idleServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func startIdleServer() (*idleServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("idle server: %w", err)
	}
	s := &idleServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(10 * time.Millisecond)
				continue
			}
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte{'G'}); err != nil {
				c.Close()
				continue
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	}()
	return s, nil
}

func (s *idleServer) addr() string { return s.ln.Addr().String() }

// dropAll closes every held server-side connection.
func (s *idleServer) dropAll() {
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
}

func (s *idleServer) close() {
	s.ln.Close()
	s.wg.Wait()
	s.dropAll()
}

// sourceAddr returns the i-th loopback source address 127.0.0.2 … 127.0.0.9,
// so that tens of thousands of client sockets do not exhaust one address's
// ephemeral ports.
func sourceAddr(i int) *net.TCPAddr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%8))}
}

// openIdle opens n sessions to addr, each confirmed by the server's greeting
// byte, and returns them. On error it closes what it opened.
func openIdle(ctx context.Context, addr string, n int) ([]net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	conns := make([]net.Conn, n)
	const workers = 32
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: sourceAddr(i)}
				c, err := d.DialContext(ctx, "tcp", addr)
				if err == nil {
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					var b [1]byte
					_, err = c.Read(b[:])
					c.SetReadDeadline(time.Time{})
					if err != nil {
						c.Close()
					}
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("idle session %d via %s: %w", i, addr, err)
					}
					mu.Unlock()
					cancel()
					continue
				}
				conns[i] = c
			}
		}()
	}
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = fmt.Errorf("idle sessions via %s: %w", addr, ctx.Err())
	}
	if first != nil {
		closeAll(conns)
		return nil, first
	}
	return conns, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// idleResult is the proxy's footprint per idle session.
type idleResult struct {
	rssPerSession float64 // bytes
	fdsPerSession float64
}

// measureIdle opens n idle sessions through addr, served by srv, and
// measures pid's RSS and fd count before and settle after.
func measureIdle(ctx context.Context, addr string, pid int, srv *idleServer, n int, settle time.Duration) (idleResult, error) {
	defer srv.dropAll()
	time.Sleep(300 * time.Millisecond)
	rss0, err := procRSS(pid)
	if err != nil {
		return idleResult{}, err
	}
	fd0, err := procFDs(pid)
	if err != nil {
		return idleResult{}, err
	}
	conns, err := openIdle(ctx, addr, n)
	if err != nil {
		return idleResult{}, err
	}
	defer closeAll(conns)
	time.Sleep(settle) // let the proxy settle (GC, lazy allocations, parking)
	rss1, err := procRSS(pid)
	if err != nil {
		return idleResult{}, err
	}
	fd1, err := procFDs(pid)
	if err != nil {
		return idleResult{}, err
	}
	return idleResult{
		rssPerSession: float64(rss1-rss0) / float64(n),
		fdsPerSession: float64(fd1-fd0) / float64(n),
	}, nil
}
