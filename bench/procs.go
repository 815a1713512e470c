package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// process is a child the suite started. Only processes in the registry are
// ever signalled, and only by their PID.
type process struct {
	name string
	cmd  *exec.Cmd
	log  *cappedBuffer // combined stdout and stderr
	done chan struct{}
	err  error // valid after done is closed
}

var registry struct {
	mu    sync.Mutex
	procs map[int]*process
}

// cappedBuffer keeps the first limit bytes written to it.
type cappedBuffer struct {
	mu    sync.Mutex
	buf   *bytes.Buffer
	limit int
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.limit - c.buf.Len(); room > 0 {
		if len(p) > room {
			c.buf.Write(p[:room])
		} else {
			c.buf.Write(p)
		}
	}
	return len(p), nil
}

// startProcess starts name with args, registers it, and reaps it in the
// background. The child is sent SIGKILL by the kernel if the suite dies.
func startProcess(label, name string, args ...string) (*process, error) {
	return startProcessEnv(label, nil, name, args...)
}

// startProcessEnv is startProcess with env added to the suite's own
// environment.
func startProcessEnv(label string, env []string, name string, args ...string) (*process, error) {
	cmd := exec.Command(name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	w := &cappedBuffer{buf: &bytes.Buffer{}, limit: 64 << 10}
	cmd.Stdout = w
	cmd.Stderr = w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	p := &process{name: label, cmd: cmd, log: w, done: make(chan struct{})}
	registry.mu.Lock()
	if registry.procs == nil {
		registry.procs = make(map[int]*process)
	}
	registry.procs[cmd.Process.Pid] = p
	registry.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		registry.mu.Lock()
		delete(registry.procs, cmd.Process.Pid)
		registry.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// output returns what the process wrote so far (at most 64 KiB).
func (p *process) output() string {
	p.log.mu.Lock()
	defer p.log.mu.Unlock()
	return p.log.buf.String()
}

// tail returns the last n bytes of the output, for error messages.
func (p *process) tail(n int) string {
	s := strings.TrimSpace(p.output())
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}

// stop sends SIGTERM, waits up to grace, then SIGKILL. It is safe to call
// more than once.
func (p *process) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (p *process) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// stopAll stops every registered process; used on exit and on signals.
func stopAll() {
	registry.mu.Lock()
	procs := make([]*process, 0, len(registry.procs))
	for _, p := range registry.procs {
		procs = append(procs, p)
	}
	registry.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.stop(5 * time.Second)
		}()
	}
	wg.Wait()
}

// freePort asks the kernel for an unused TCP port on 127.0.0.1.
func freePort() (int, error) {
	ps, err := freePorts(1)
	if err != nil {
		return 0, err
	}
	return ps[0], nil
}

// freePorts returns n distinct free ports on 127.0.0.1: their listeners
// are held until all are picked, or the kernel could hand one out twice.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitTCP polls addr until it accepts a connection or timeout passes.
func waitTCP(addr string, timeout time.Duration, alive func() bool) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if alive != nil && !alive() {
			return fmt.Errorf("wait for %s: process exited", addr)
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("wait for %s: %w", addr, last)
}

// raiseNofile raises RLIMIT_NOFILE so the suite (and its children, which
// inherit it) can hold tens of thousands of sockets.
func raiseNofile(want uint64) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur >= want {
		return nil
	}
	if lim.Max < want {
		lim.Max = want
	}
	lim.Cur = want
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("setrlimit NOFILE %d: %w", want, err)
	}
	return nil
}

// nofileLimit is the current soft RLIMIT_NOFILE, which children inherit.
func nofileLimit() uint64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 1024
	}
	return lim.Cur
}

// raiseNofileMax raises the soft RLIMIT_NOFILE to want, or to the hard limit
// when want is above it (raising the hard limit needs CAP_SYS_RESOURCE).
func raiseNofileMax(want uint64) (uint64, error) {
	if err := raiseNofile(want); err == nil {
		return nofileLimit(), nil
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("setrlimit NOFILE %d: %w", lim.Max, err)
	}
	return lim.Max, fmt.Errorf("RLIMIT_NOFILE hard limit is %d, below %d", lim.Max, want)
}

// procCPU returns utime+stime of pid and all its descendants, in seconds.
// /proc/PID/stat of a thread group leader already includes all its threads.
func procCPU(pid int) (float64, error) {
	pids := append([]int{pid}, descendants(pid)...)
	var total uint64
	for i, p := range pids {
		u, s, err := statTimes(p)
		if err != nil {
			if i == 0 {
				return 0, err
			}
			continue // a child that just ended
		}
		total += u + s
	}
	return float64(total) / clockTicks, nil
}

// kworkerCPU returns the utime+stime of the kernel's worker threads
// (kworker/...), in seconds. A relay done by the kernel (hamr's sockmap
// relay) runs there, and not in the proxy's process.
func kworkerCPU() float64 {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var total uint64
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || !bytes.HasPrefix(comm, []byte("kworker")) {
			continue
		}
		if u, s, err := statTimes(pid); err == nil {
			total += u + s
		}
	}
	return float64(total) / clockTicks
}

// statTimes returns utime and stime of pid in clock ticks.
func statTimes(pid int) (utime, stime uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse stat of %d: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("parse stat of %d: %d fields", pid, len(f))
	}
	if utime, err = strconv.ParseUint(f[11], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("parse utime of %d: %w", pid, err)
	}
	if stime, err = strconv.ParseUint(f[12], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("parse stime of %d: %w", pid, err)
	}
	return utime, stime, nil
}

// descendants lists the processes below pid, found by their parent PID.
func descendants(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := make(map[int][]int)
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		pp, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		children[pp] = append(children[pp], p)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 && len(out) < 1000 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// procRSS returns VmRSS of pid in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 1 {
			break
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse VmRSS of %d: %w", pid, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

// procFDs counts the open file descriptors of pid.
func procFDs(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, fmt.Errorf("list fds of %d: %w", pid, err)
	}
	return len(ents), nil
}

// ensureTools installs the Debian packages the suite needs when a command is
// missing. It runs apt-get only when something is missing.
func ensureTools(logw io.Writer) error {
	need := map[string]string{
		"haproxy":            "haproxy",
		"mariadbd":           "mariadb-server",
		"mariadb-install-db": "mariadb-server",
		"mariadb":            "mariadb-client",
		"sysbench":           "sysbench",
	}
	var pkgs []string
	seen := map[string]bool{}
	for bin, pkg := range need {
		if _, err := lookPath(bin); err != nil && !seen[pkg] {
			seen[pkg] = true
			pkgs = append(pkgs, pkg)
		}
	}
	if len(pkgs) == 0 {
		return nil
	}
	fmt.Fprintf(logw, "installing %s\n", strings.Join(pkgs, " "))
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, args := range [][]string{
		{"update"},
		append([]string{"install", "-y", "--no-install-recommends"}, pkgs...),
	} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %s: %w: %s", args[0], err, lastLines(string(out), 5))
		}
	}
	return nil
}

// lookPath is exec.LookPath that also searches the sbin directories, which
// are not on PATH for every user.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// errNotAvailable marks a contender that could not be started; the suite
// reports it and carries on with the others.
var errNotAvailable = errors.New("not available")

// execOutput runs a short command and returns its combined output.
func execOutput(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w", name, err)
	}
	return string(out), nil
}
