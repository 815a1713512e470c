package vip

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// maxOutput bounds the script output kept for the log.
const maxOutput = 4096

// notifier runs notify scripts one at a time, in the order they were
// queued, on one goroutine (run). Queueing never blocks the state machine.
type notifier struct {
	log     *slog.Logger
	timeout time.Duration

	mu       sync.Mutex
	queue    [][]string
	closed   bool
	wake     chan struct{}         // capacity 1
	captures map[*capture]struct{} // output of scripts whose pipe is still open
	after    <-chan struct{}       // if not nil, run waits for it before the first script
	wg       sync.WaitGroup        // the captures' goroutines
}

func newNotifier(log *slog.Logger, timeout time.Duration) *notifier {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return &notifier{log: log, timeout: timeout, wake: make(chan struct{}, 1), captures: make(map[*capture]struct{})}
}

// transition queues the scripts for entering state: the state's own
// script, then the generic notify script with keepalived's arguments
// INSTANCE NAME STATE PRIORITY appended.
func (n *notifier) transition(specific, generic []string, name, state string, priority int) {
	if len(specific) > 0 {
		n.enqueue(specific)
	}
	if len(generic) > 0 {
		argv := append(append([]string(nil), generic...), "INSTANCE", name, state, strconv.Itoa(priority))
		n.enqueue(argv)
	}
}

func (n *notifier) enqueue(argv []string) {
	n.mu.Lock()
	if !n.closed {
		n.queue = append(n.queue, argv)
	}
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// close makes run return once the queue is empty.
func (n *notifier) close() {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// run executes queued scripts until close was called and the queue is
// drained. Each script is bounded by the timeout; ctx should outlive the
// instance's own cancellation so that notify_stop still runs.
func (n *notifier) run(ctx context.Context) {
	if n.after != nil {
		<-n.after // the scripts of the instance this one replaces
	}
	for {
		n.mu.Lock()
		if len(n.queue) == 0 {
			closed := n.closed
			n.mu.Unlock()
			if closed {
				n.endCaptures()
				return
			}
			<-n.wake
			continue
		}
		argv := n.queue[0]
		n.queue = n.queue[1:]
		n.mu.Unlock()
		n.exec(ctx, argv)
	}
}

// endCaptures stops reading the output of processes that scripts left
// running (they get EPIPE from then on) and waits for the readers.
func (n *notifier) endCaptures() {
	n.mu.Lock()
	for c := range n.captures {
		c.r.SetReadDeadline(time.Now())
	}
	n.mu.Unlock()
	n.wg.Wait()
}

// exec runs one script in a process group of its own, so that the timeout
// kills what the script started as well. What the script leaves running
// in the background when it exits is its own business, as with
// keepalived: it keeps its stdout (see capture) and is not waited for.
func (n *notifier) exec(ctx context.Context, argv []string) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	start := time.Now()
	r, w, err := os.Pipe()
	if err != nil {
		n.log.Warn("vrrp notify script not run", "argv", argv, "err", err)
		return
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		n.log.Warn("vrrp notify script failed", "argv", argv, "err", err)
		return
	}
	c := n.capture(r)
	err = cmd.Wait()
	output := string(bytes.TrimSpace(c.first()))
	if err != nil {
		n.log.Warn("vrrp notify script failed", "argv", argv, "err", err, "output", output, "elapsed", time.Since(start))
		return
	}
	n.log.Info("vrrp notify script ran", "argv", argv, "output", output, "elapsed", time.Since(start))
}

// capture reads a script's output: the first maxOutput bytes are kept for
// the log, the rest is discarded. It reads until every process holding
// the pipe has closed it, so that a background process the script
// started neither blocks on a full pipe nor dies of SIGPIPE; close ends
// what is still reading then.
type capture struct {
	r   *os.File
	eof chan struct{} // closed when the reading ends

	mu  sync.Mutex
	buf []byte
}

// outputGrace is how long first waits, once the script has exited, for
// output still in the pipe when background processes keep it open.
const outputGrace = 100 * time.Millisecond

func (n *notifier) capture(r *os.File) *capture {
	c := &capture{r: r, eof: make(chan struct{})}
	n.mu.Lock()
	n.captures[c] = struct{}{}
	n.mu.Unlock()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer func() {
			n.mu.Lock()
			delete(n.captures, c)
			n.mu.Unlock()
		}()
		c.read()
	}()
	return c
}

func (c *capture) read() {
	defer close(c.eof)
	defer c.r.Close()
	b := make([]byte, 4096)
	for {
		k, err := c.r.Read(b)
		c.mu.Lock()
		if room := maxOutput - len(c.buf); room > 0 {
			c.buf = append(c.buf, b[:min(k, room)]...)
		}
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// first returns the output kept so far, once the pipe is closed or, if a
// background process holds it open, after outputGrace.
func (c *capture) first() []byte {
	select {
	case <-c.eof:
	case <-time.After(outputGrace):
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.buf)
}
