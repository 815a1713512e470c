package integration

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// TestTopology checks the harness itself: each server answers on its port
// as the application user, the replicas are read-only and apply the
// primary's writes, and a killed replica comes back as it was.
func TestTopology(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	topo := Start(t, Options{})
	t.Logf("started 3 servers in %v:\n%s", time.Since(start).Round(time.Millisecond), topo)

	for i := range topo.Servers {
		if got := mustPortVia(t, topo.Addr(i)); got != topo.Servers[i].Port {
			t.Errorf("server %d: @@port = %d, want %d", i, got, topo.Servers[i].Port)
		}
		ro, err := topo.QueryValue(ctx, i, "SELECT @@read_only")
		if err != nil {
			t.Fatal(err)
		}
		if want := strconv.Itoa(min(i, 1)); ro != want {
			t.Errorf("server %d: @@read_only = %s, want %s", i, ro, want)
		}
	}

	if err := topo.Exec(ctx, 0, "CREATE DATABASE it", "CREATE TABLE it.t (id INT PRIMARY KEY)", "INSERT INTO it.t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := topo.WaitReplicating(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(topo.Servers); i++ {
		if n, err := topo.QueryValue(ctx, i, "SELECT COUNT(*) FROM it.t"); err != nil || n != "1" {
			t.Errorf("server %d: rows replicated = %q, %v; want 1", i, n, err)
		}
	}

	if err := topo.Kill(1); err != nil {
		t.Fatal(err)
	}
	if _, err := portVia(ctx, topo.Addr(1)); err == nil {
		t.Fatal("killed server 1 still answers")
	}
	if err := topo.Exec(ctx, 0, "INSERT INTO it.t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if err := topo.Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := topo.WaitReplicating(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := topo.QueryValue(ctx, 1, "SELECT COUNT(*) FROM it.t"); err != nil || n != "2" {
		t.Errorf("restarted replica: rows = %q, %v; want 2", n, err)
	}
	if ro, err := topo.QueryValue(ctx, 1, "SELECT @@read_only"); err != nil || ro != "1" {
		t.Errorf("restarted replica: @@read_only = %q, %v; want 1", ro, err)
	}
}
