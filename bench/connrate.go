package main

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
)

// benchNet is the go-sql-driver network name whose dialer spreads client
// sockets over several loopback source addresses.
const benchNet = "benchtcp"

var dialSeq atomic.Uint64

func init() {
	mysql.RegisterDialContext(benchNet, func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: sourceAddr(int(dialSeq.Add(1)))}
		return d.DialContext(ctx, "tcp", addr)
	})
	// The driver logs every failed connection; the failover workload
	// provokes them on purpose and counts them itself.
	_ = mysql.SetLogger(quietLogger{})
}

type quietLogger struct{}

func (quietLogger) Print(...any) {}

// connectQuery opens one connection with c, runs query, reads the first
// column of the first row into a string, and closes the connection.
func connectQuery(ctx context.Context, c driver.Connector, query string) (string, error) {
	conn, err := c.Connect(ctx)
	if err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	return queryOne(ctx, conn, query)
}

// queryOne runs query on conn and returns the first column of its first row.
func queryOne(ctx context.Context, conn driver.Conn, query string) (string, error) {
	q, ok := conn.(driver.QueryerContext)
	if !ok {
		return "", errors.New("driver connection cannot query")
	}
	rows, err := q.QueryContext(ctx, query, nil)
	if err != nil {
		return "", fmt.Errorf("query: %w", err)
	}
	defer rows.Close()
	dest := make([]driver.Value, len(rows.Columns()))
	if err := rows.Next(dest); err != nil {
		return "", fmt.Errorf("read row: %w", err)
	}
	var s string
	switch v := dest[0].(type) {
	case []byte:
		s = string(v)
	case string:
		s = v
	default:
		s = fmt.Sprint(v)
	}
	for rows.Next(dest) == nil { // drain; the queries here return one row
	}
	return s, nil
}

// connRateResult is the outcome of one connection-rate measurement.
type connRateResult struct {
	conns  int64
	errors int64
	rate   float64 // successful connections per second
}

// connRate runs workers goroutines that each loop connect, SELECT 1, close
// against addr for d.
func connRate(ctx context.Context, addr string, workers int, d time.Duration) (connRateResult, error) {
	cfg := mysqlConfig(addr)
	cfg.Net = benchNet
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		return connRateResult{}, fmt.Errorf("connector: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		ok, bad atomic.Int64
		wg      sync.WaitGroup
		firstMu sync.Mutex
		first   error
	)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				qctx, qcancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := connectQuery(qctx, c, "SELECT 1")
				qcancel()
				if err != nil {
					bad.Add(1)
					firstMu.Lock()
					if first == nil {
						first = err
					}
					firstMu.Unlock()
					time.Sleep(10 * time.Millisecond)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	r := connRateResult{conns: ok.Load(), errors: bad.Load()}
	r.rate = float64(r.conns) / elapsed.Seconds()
	if r.conns == 0 {
		return r, fmt.Errorf("connection rate via %s: no successful connection: %w", addr, first)
	}
	return r, nil
}
