package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
)

// failoverResult is what clients of a proxy saw while its primary was
// killed.
type failoverResult struct {
	ok       int64
	errors   int64         // failed connects or queries
	maxGap   time.Duration // longest time without any successful query
	onBackup bool          // the last successful query was served by B
	firstOnB time.Duration // from the kill to the first query served by B
	// From the first client error after the kill (the proxy passing A's
	// end on) to the first query served by B: the proxy's own part of
	// the gap, a reconnect and a login; 0 if B served first. Only
	// meaningful if recovered.
	recovery  time.Duration
	recovered bool // both a client error and a query on B were seen
	// From the kill until A was reaped. The longest gap cannot be much
	// shorter: the kernel frees a SIGKILLed server's memory before it
	// closes its sockets, and no proxy can move a client before that.
	death time.Duration
}

// waitServedBy polls addr until a query is answered by the server on port.
func waitServedBy(ctx context.Context, addr string, port int, timeout time.Duration) error {
	c, err := mysql.NewConnector(mysqlConfig(addr))
	if err != nil {
		return fmt.Errorf("connector: %w", err)
	}
	deadline := time.Now().Add(timeout)
	var last string
	var lastErr error
	for time.Now().Before(deadline) {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		got, err := connectQuery(qctx, c, "SELECT @@port")
		cancel()
		if err == nil && got == strconv.Itoa(port) {
			return nil
		}
		last, lastErr = got, err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("via %s: not served by port %d within %v (last answer %q, error %v)",
		addr, port, timeout, last, lastErr)
}

// failover runs workers that each loop: connect to addr, run four queries,
// close. After warm it SIGKILLs server a, runs for after more, and reports
// errors and the longest gap between successful queries across all workers.
func failover(ctx context.Context, addr string, a *mariadb, bPort, workers int, warm, after time.Duration) (failoverResult, error) {
	cfg := mysqlConfig(addr)
	cfg.Net = benchNet
	cfg.Timeout = time.Second
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		return failoverResult{}, fmt.Errorf("connector: %w", err)
	}
	var (
		mu       sync.Mutex
		lastOK   time.Time
		maxGap   time.Duration
		lastPort string
		killedAt time.Time
		firstOnB time.Duration
		firstErr time.Time // the first failed query or connect after the kill
		ok, bad  atomic.Int64
		wg       sync.WaitGroup
	)
	bPortS := strconv.Itoa(bPort)
	success := func(port string) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if !lastOK.IsZero() && now.Sub(lastOK) > maxGap {
			maxGap = now.Sub(lastOK)
		}
		lastOK = now
		lastPort = port
		if port == bPortS && !killedAt.IsZero() && firstOnB == 0 {
			firstOnB = now.Sub(killedAt)
		}
	}
	failed := func() {
		bad.Add(1)
		mu.Lock()
		if !killedAt.IsZero() && firstErr.IsZero() {
			firstErr = time.Now()
		}
		mu.Unlock()
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for runCtx.Err() == nil {
				qctx, cancel := context.WithTimeout(runCtx, 3*time.Second)
				conn, err := c.Connect(qctx)
				if err != nil {
					cancel()
					if runCtx.Err() == nil {
						failed()
					}
					time.Sleep(5 * time.Millisecond)
					continue
				}
				for range 4 {
					port, err := queryOne(qctx, conn, "SELECT @@port")
					if err != nil {
						if runCtx.Err() == nil {
							failed()
						}
						break
					}
					ok.Add(1)
					success(port)
				}
				conn.Close()
				cancel()
			}
		}()
	}
	select {
	case <-time.After(warm):
	case <-ctx.Done():
	}
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	a.proc.kill()
	death := time.Since(killedAt)
	select {
	case <-time.After(after):
	case <-ctx.Done():
	}
	end := time.Now()
	stop()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	// A gap still open at the end counts too.
	if !lastOK.IsZero() && end.Sub(lastOK) > maxGap {
		maxGap = end.Sub(lastOK)
	}
	var recovery time.Duration
	recovered := firstOnB > 0 && !firstErr.IsZero()
	if recovered {
		recovery = max(0, killedAt.Add(firstOnB).Sub(firstErr))
	}
	r := failoverResult{
		recovery:  recovery,
		recovered: recovered,
		ok:        ok.Load(),
		errors:    bad.Load(),
		maxGap:    maxGap,
		onBackup:  lastPort == bPortS,
		firstOnB:  firstOnB,
		death:     death,
	}
	if lastOK.IsZero() {
		return r, fmt.Errorf("failover via %s: no successful query at all", addr)
	}
	return r, ctx.Err()
}
