package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hamr-project/hamr/routing"
)

const childEnv = "HAMR_PROXY_EMFILE_BACKEND"

// TestEMFILEChild is the proxy process of TestAcceptSurvivesRealEMFILE. It
// does nothing unless started by that test.
func TestEMFILEChild(t *testing.T) {
	be := os.Getenv(childEnv)
	if be == "" {
		return
	}
	rt, err := routing.New("emfile", routing.FirstAvailable, []string{be}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := New(Config{Name: "emfile", Addr: "127.0.0.1:0", ConnectTimeout: 5 * time.Second, MaxConnections: 1000},
		rt, Options{Logger: slog.New(slog.NewTextHandler(os.Stdout, nil))})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = uint64(len(fds) + 6) // room for about one session
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("\naddr %s\n", p.Addr())
	io.Copy(io.Discard, os.Stdin) // until the parent is done
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Error(err)
	}
	if !rt.Available() {
		t.Error("destination marked down because this host ran out of file descriptors")
	}
}

// TestAcceptSurvivesRealEMFILE runs the proxy in a child process whose
// RLIMIT_NOFILE leaves room for about one session, opens more clients than
// that, and checks that every client is eventually served as earlier ones
// leave: the accept loop hits EMFILE and keeps going.
func TestAcceptSurvivesRealEMFILE(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		return
	}
	be := newBackend(t, echo)
	cmd := exec.Command(os.Args[0], "-test.run=^TestEMFILEChild$")
	cmd.Env = append(os.Environ(), childEnv+"="+be.addr())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if !waited {
			cmd.Process.Kill() // our own child, by PID
			cmd.Wait()
		}
	}()
	sc := bufio.NewScanner(stdout)
	addr := ""
	for addr == "" && sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if a, ok := strings.CutPrefix(sc.Text(), "addr "); ok {
			addr = a
		}
	}
	if addr == "" {
		t.Fatalf("child did not report its address:\n%s", out.String())
	}
	logs := make(chan string)
	go func() {
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
		}
		logs <- out.String()
	}()

	const clients = 12
	pending := make([]net.Conn, clients)
	open := func(i int) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		c.Write([]byte{byte(i)})
		pending[i] = c
	}
	for i := range pending {
		open(i)
	}
	served, reopened := 0, 0
	for round := 0; served < clients && round < 300; round++ {
		for i, c := range pending {
			if c == nil {
				continue
			}
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			b := make([]byte, 1)
			_, err := c.Read(b)
			switch {
			case err == nil && b[0] == byte(i):
				c.Close() // leaving frees the child's descriptors
				pending[i] = nil
				served++
			case err == nil:
				t.Fatalf("client %d read %d", i, b[0])
			case os.IsTimeout(err):
			default: // closed by the child (it could not dial): come back
				c.Close()
				reopened++
				open(i)
			}
		}
	}
	for _, c := range pending {
		if c != nil {
			c.Close()
		}
	}
	stdin.Close()
	err = cmd.Wait()
	waited = true
	log := <-logs
	if served != clients {
		t.Fatalf("%d of %d clients served (%d reconnects); child output:\n%s", served, clients, reopened, log)
	}
	if err != nil {
		t.Fatalf("child: %v\n%s", err, log)
	}
	if !strings.Contains(log, "accept failed") || !strings.Contains(log, "too many open files") {
		t.Fatalf("the child never hit EMFILE in accept; the test proves nothing:\n%s", log)
	}
	t.Logf("%d clients served, %d reconnects after the child closed them", served, reopened)
}
