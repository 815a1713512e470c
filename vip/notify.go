package vip

import (
	"bytes"
	"context"
	"log/slog"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// maxOutput bounds the script output kept for the log.
const maxOutput = 4096

// notifier runs notify scripts one at a time, in the order they were
// queued, on one goroutine (run). Queueing never blocks the state machine.
type notifier struct {
	log     *slog.Logger
	timeout time.Duration

	mu     sync.Mutex
	queue  [][]string
	closed bool
	wake   chan struct{} // capacity 1
}

func newNotifier(log *slog.Logger, timeout time.Duration) *notifier {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return &notifier{log: log, timeout: timeout, wake: make(chan struct{}, 1)}
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
	for {
		n.mu.Lock()
		if len(n.queue) == 0 {
			closed := n.closed
			n.mu.Unlock()
			if closed {
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

func (n *notifier) exec(ctx context.Context, argv []string) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out limitedBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	output := string(bytes.TrimSpace(out.buf.Bytes()))
	if err != nil {
		n.log.Warn("vrrp notify script failed", "argv", argv, "err", err, "output", output, "elapsed", time.Since(start))
		return
	}
	n.log.Info("vrrp notify script ran", "argv", argv, "output", output, "elapsed", time.Since(start))
}

// limitedBuffer keeps the first maxOutput bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := maxOutput - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
