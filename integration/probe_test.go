package integration

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestProbeBlock(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{Host: "127.0.0.2", ServerArgs: []string{"--max-connect-errors=2"}})
	for i := range 3 {
		c, _ := net.Dial("tcp", topo.Addr(0))
		c.Close()
		time.Sleep(100 * time.Millisecond)
		n, _ := topo.GlobalStatus(ctx, 0, "Aborted_connects")
		_, err := portVia(ctx, topo.Addr(0))
		t.Logf("%d: aborted=%d login=%v", i, n, err)
	}
	for range 3 {
		c, _ := net.Dial("tcp", topo.Addr(0))
		c.Close()
	}
	time.Sleep(100 * time.Millisecond)
	n, _ := topo.GlobalStatus(ctx, 0, "Aborted_connects")
	_, err := portVia(ctx, topo.Addr(0))
	t.Logf("3 in a row: aborted=%d login=%v", n, err)
}
