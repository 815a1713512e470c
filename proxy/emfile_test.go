package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
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
	p, rt, in, ok := startChild(t, childEnv)
	if !ok {
		return
	}
	if line, _ := in.ReadString('\n'); line != "fill\n" {
		t.Fatalf("parent said %q", line)
	}
	// Every free descriptor slot is taken, so the next client finds no
	// room at all and accept(2) itself must fail; the slots come back
	// only when the parent's first session ends.
	filler, err := fillDescriptors()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("full %d\n", len(filler))
	io.Copy(io.Discard, in) // until the parent is done
	for _, f := range filler {
		f.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Error(err)
	}
	if !rt.Available() {
		t.Error("destination marked down because this host ran out of file descriptors")
	}
}

// startChild starts the proxy of a child process: a route to the
// backend named by env that logs to stdout, where the parent reads its
// address; the parent's commands come on the returned reader. ok is
// false when env is unset: the test runs as itself, not as a child.
func startChild(t *testing.T, env string) (*Route, *routing.Route, *bufio.Reader, bool) {
	be := os.Getenv(env)
	if be == "" {
		return nil, nil, nil, false // not started by the parent test
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
	fmt.Printf("\naddr %s\n", p.Addr())
	return p, rt, bufio.NewReader(os.Stdin), true
}

// fillDescriptors lowers RLIMIT_NOFILE to just above the highest open
// descriptor and opens /dev/null until no slot below it is free.
func fillDescriptors() ([]*os.File, error) {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	top := 0
	for _, e := range fds {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > top {
			top = n
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return nil, err
	}
	lim.Cur = uint64(top + 8)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return nil, err
	}
	var filler []*os.File
	for range lim.Cur {
		f, err := os.Open(os.DevNull)
		if errors.Is(err, syscall.EMFILE) {
			return filler, nil
		}
		if err != nil {
			return filler, err
		}
		filler = append(filler, f)
	}
	return filler, fmt.Errorf("still no EMFILE after %d opens", len(filler))
}

// TestAcceptSurvivesRealEMFILE runs the proxy in a child process, opens one
// session, has the child take every free descriptor slot, and opens more
// clients. accept(2) must fail with EMFILE, and each client must still be
// served, one after the other, as earlier ones leave.
func TestAcceptSurvivesRealEMFILE(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		return
	}
	ch := startChildProxy(t, "TestEMFILEChild", childEnv, newBackend(t, echo).addr())
	addr := ch.waitFor("addr ")

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
	// The first session holds two of the child's descriptors while it
	// fills the rest.
	open(0)
	pending[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(pending[0], make([]byte, 1)); err != nil {
		t.Fatalf("first client not served: %v\n%s", err, ch.out.String())
	}
	pending[0].SetReadDeadline(time.Time{})
	ch.say("fill")
	ch.waitFor("full ")
	for i := 1; i < clients; i++ {
		open(i) // the kernel completes the handshake; accept(2) fails
	}
	ch.waitFor("accept failed")
	pending[0].Close()
	pending[0] = nil
	served := 1
	logs := ch.rest()

	refused := 0
	for deadline := time.Now().Add(20 * time.Second); served < clients && time.Now().Before(deadline); {
		for i, c := range pending {
			if c == nil {
				continue
			}
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			b := make([]byte, 256)
			n, err := c.Read(b)
			switch {
			case err == nil && n == 1 && b[0] == byte(i):
				c.Close() // leaving frees the child's descriptors
				pending[i] = nil
				served++
			case err == nil && n >= 5 && b[4] == 0xff:
				// Accepted, but no descriptor was left to dial with:
				// refused with a MySQL error. Come back.
				c.Close()
				refused++
				open(i)
			case err == nil:
				t.Fatalf("client %d read %q", i, b[:n])
			case os.IsTimeout(err):
			default:
				t.Fatalf("client %d: closed without an error packet: %v", i, err)
			}
		}
	}
	for _, c := range pending {
		if c != nil {
			c.Close()
		}
	}
	log, err := ch.end(logs)
	if served != clients {
		t.Fatalf("%d of %d clients served (%d refused and back); child output:\n%s", served, clients, refused, log)
	}
	if err != nil {
		t.Fatalf("child: %v\n%s", err, log)
	}
	if !strings.Contains(log, "accept failed") || !strings.Contains(log, "too many open files") {
		t.Fatalf("the child never hit EMFILE in accept:\n%s", log)
	}
	if !strings.Contains(log, "accept recovered") {
		t.Fatalf("the child never logged that accept recovered:\n%s", log)
	}
	t.Logf("%d clients served, %d refused for lack of descriptors and back", served, refused)
}

const oneFreeEnv = "HAMR_PROXY_ONE_FREE_BACKEND"

// TestOneFreeChild is the proxy process of TestDialShortagePauses. It
// does nothing unless started by that test.
func TestOneFreeChild(t *testing.T) {
	p, _, in, ok := startChild(t, oneFreeEnv)
	if !ok {
		return
	}
	in.ReadString('\n')
	filler, err := fillDescriptors()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("full\n")
	in.ReadString('\n') // the clients are queued
	// One slot: accept(2) succeeds, and the dial's socket(2) fails.
	filler[len(filler)-1].Close()
	fmt.Printf("one free\n")
	io.Copy(io.Discard, in)
	for _, f := range filler[:len(filler)-1] {
		f.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p.Shutdown(ctx)
}

// TestDialShortagePauses: with one descriptor left, every client is
// accepted and then cannot be dialed for. Each gets a MySQL error, and
// the route pauses accepting after each, with a growing back-off, rather
// than refusing its whole backlog at once: those clients may still be
// served once descriptors come back.
func TestDialShortagePauses(t *testing.T) {
	if os.Getenv(oneFreeEnv) != "" {
		return
	}
	ch := startChildProxy(t, "TestOneFreeChild", oneFreeEnv, newBackend(t, echo).addr())
	addr := ch.waitFor("addr ")
	ch.say("fill")
	ch.waitFor("full")
	const clients = 6
	var cs []net.Conn
	for range clients {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs = append(cs, c)
	}
	ch.say("queued")
	ch.waitFor("one free")
	ch.rest()
	// Each client is read on a goroutine of its own, so that when it
	// got its answer does not depend on the order of reading.
	at := make([]time.Time, len(cs))
	errs := make(chan error, len(cs))
	for i, c := range cs {
		go func() {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			b := make([]byte, 256)
			n, err := c.Read(b)
			at[i] = time.Now()
			if err == nil && (n < 5 || b[4] != 0xff) {
				err = fmt.Errorf("read %q", b[:n])
			}
			if err != nil {
				err = fmt.Errorf("client %d: %w; want an ERR packet", i, err)
			}
			errs <- err
		}()
	}
	for range cs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	first, last := slices.MinFunc(at, time.Time.Compare), slices.MaxFunc(at, time.Time.Compare)
	// Pauses of 5, 10, 20, 40 and 80 ms between the six refusals: at
	// least 155 ms. Refused in one batch, they took well under 1 ms.
	if span := last.Sub(first); span < 100*time.Millisecond {
		t.Errorf("%d clients refused within %v: the route did not pause accepting, or its back-off did not grow", clients, span)
	}
}

// childProxy is the test binary run again as a proxy in a process of its
// own (one of the *Child tests), so that it can run out of descriptors;
// the test talks to it over its stdin and reads its stdout.
type childProxy struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	sc    *bufio.Scanner
	out   bytes.Buffer // what it printed so far
	ended bool
}

// startChildProxy runs the test named test with env set to the backend's
// address. The child is killed, by PID, if the test ends first or after
// a minute: a child that never prints what the test waits for would
// block the scanner for ever, and killing it ends its output.
func startChildProxy(t *testing.T, test, env, backend string) *childProxy {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$")
	cmd.Env = append(os.Environ(), env+"="+backend)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childProxy{t: t, cmd: cmd, stdin: stdin, sc: bufio.NewScanner(stdout)}
	hang := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() })
	t.Cleanup(func() {
		hang.Stop()
		if !c.ended {
			stdin.Close()
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return c
}

// waitFor reads the child's output up to a line holding s and returns
// what follows s on that line.
func (c *childProxy) waitFor(s string) string {
	c.t.Helper()
	for c.sc.Scan() {
		c.out.WriteString(c.sc.Text() + "\n")
		if _, rest, ok := strings.Cut(c.sc.Text(), s); ok {
			return rest
		}
	}
	c.t.Fatalf("child output ended before %q:\n%s", s, c.out.String())
	return ""
}

// say sends the child one line.
func (c *childProxy) say(line string) { io.WriteString(c.stdin, line+"\n") }

// rest reads the child's output to its end on a goroutine; the channel
// gets all of it, once the child has exited.
func (c *childProxy) rest() <-chan string {
	logs := make(chan string, 1)
	go func() {
		for c.sc.Scan() {
			c.out.WriteString(c.sc.Text() + "\n")
		}
		logs <- c.out.String()
	}()
	return logs
}

// end tells the child to finish (its stdin ends) and waits for it and for
// its output, which rest is reading.
func (c *childProxy) end(logs <-chan string) (string, error) {
	c.stdin.Close()
	log := <-logs // all read before Wait closes the pipe
	err := c.cmd.Wait()
	c.ended = true
	return log, err
}
