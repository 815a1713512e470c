package vrrp

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// router is a VRRP speaker running on one lab host: keepalived or hamr.
type router struct {
	t       testing.TB
	kind    string // "keepalived" or "hamr"
	h       *host
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has been reaped
	waitErr error         // valid after done
	logPath string

	childPidFile string // keepalived: the VRRP child's pid file
	admin        string // hamr: admin address inside h's namespace
	conf         string // hamr: its configuration file
}

// routerConf is what a test varies between routers; the rest is the lab's.
type routerConf struct {
	priority  int
	advert    time.Duration
	version   int // 3 (default) or 2 with PASS auth
	nopreempt bool
	unicast   bool     // advertise to the other router instead of 224.0.0.18
	peers     []string // the unicast peers; filled in by lab.router
	track     bool     // hamr: track_routes = ["rw"] (weight 0: FAULT while rw is down)
	backend   string   // hamr: the rw route's destination; default the responder
}

func (c routerConf) withDefaults() routerConf {
	if c.advert == 0 {
		c.advert = time.Second
	}
	if c.version == 0 {
		c.version = 3
	}
	return c
}

const authPass = "secret12"

// start runs the command in h's namespace, logging to a file in the lab
// directory, and makes sure it is gone when the test ends.
func (l *lab) start(kind string, h *host, name string, args ...string) *router {
	l.t.Helper()
	r := &router{t: l.t, kind: kind, h: h, done: make(chan struct{})}
	r.logPath = filepath.Join(l.dir, name+".log")
	logf, err := os.Create(r.logPath)
	if err != nil {
		l.t.Fatal(err)
	}
	defer logf.Close()
	r.cmd = exec.Command("ip", append([]string{"netns", "exec", h.name}, args...)...)
	r.cmd.Stdout = logf
	r.cmd.Stderr = logf
	if err := r.cmd.Start(); err != nil {
		l.t.Fatalf("starting %s in %s: %v", kind, h.id, err)
	}
	go func() {
		r.waitErr = r.cmd.Wait()
		close(r.done)
	}()
	l.t.Cleanup(r.cleanup)
	l.routers = append(l.routers, r)
	return r
}

// cleanup stops the process if the test has not, and shows its log when
// the test failed.
func (r *router) cleanup() {
	if r.running() {
		r.signal(syscall.SIGTERM)
		if !r.waitExit(5 * time.Second) {
			r.crash()
			r.waitExit(5 * time.Second)
		}
	}
	r.killChild() // a keepalived child left behind by a crashed parent
	if r.t.Failed() {
		r.logTail()
	}
}

// logTail shows the end of the router's log in the test's output.
func (r *router) logTail() {
	b, _ := os.ReadFile(r.logPath)
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	r.t.Logf("--- %s in %s (%s), last lines:\n%s", r.kind, r.h.id, r.logPath, b)
}

func (r *router) running() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// waitExit waits for the process to end and reports whether it did.
func (r *router) waitExit(timeout time.Duration) bool {
	select {
	case <-r.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

func (r *router) signal(sig syscall.Signal) {
	if !r.running() {
		return
	}
	if err := r.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		r.t.Errorf("%s in %s: sending %v: %v", r.kind, r.h.id, sig, err)
	}
}

// terminate asks for a graceful stop (SIGTERM: resign with priority 0).
func (r *router) terminate() { r.signal(syscall.SIGTERM) }

// crash kills the router without a chance to resign. keepalived forks a
// VRRP child: the parent is stopped first so it cannot respawn the child
// or make it resign, then the child is killed, then the parent.
func (r *router) crash() {
	if r.childPidFile != "" {
		r.signal(syscall.SIGSTOP)
		r.killChild()
	}
	r.signal(syscall.SIGKILL)
}

// killChild kills keepalived's VRRP child, if it is still ours: its parent
// must be the keepalived we started.
func (r *router) killChild() {
	if r.childPidFile == "" {
		return
	}
	pid, err := readPid(r.childPidFile)
	if err != nil {
		return
	}
	if ppid, err := parentPid(pid); err != nil || ppid != r.cmd.Process.Pid {
		return // already gone, or no longer our child
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		r.t.Errorf("killing keepalived child %d: %v", pid, err)
	}
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	return pid, nil
}

// parentPid reads the parent of pid from /proc/PID/stat.
func parentPid(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	return strconv.Atoi(f[1])
}

// log returns the router's output so far.
func (r *router) log() string {
	b, _ := os.ReadFile(r.logPath)
	return string(b)
}

// waitState waits until the router reports state (MASTER, BACKUP, FAULT).
func (r *router) waitState(state string, timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, err := r.state()
		if err == nil && got == state {
			return
		}
		if !r.running() {
			r.t.Fatalf("%s in %s exited (%v) while waiting for %s", r.kind, r.h.id, r.waitErr, state)
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s in %s: state %q (%v) after %v, want %s", r.kind, r.h.id, got, err, timeout, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *router) state() (string, error) {
	if r.kind == "hamr" {
		return r.hamrState()
	}
	return keepalivedState(r.log())
}

var kaStateRE = regexp.MustCompile(`\(VI_1\) Entering (\w+) STATE`)

// keepalivedState is the state keepalived logged last for VI_1.
func keepalivedState(log string) (string, error) {
	m := kaStateRE.FindAllStringSubmatch(log, -1)
	if len(m) == 0 {
		return "", errors.New("no state logged yet")
	}
	return m[len(m)-1][1], nil
}

// startKeepalived runs keepalived (VRRP only, not forking into the
// background) on h with VI_1 configured from c.
func (l *lab) startKeepalived(h *host, c routerConf) *router {
	l.t.Helper()
	c = c.withDefaults()
	name := fmt.Sprintf("keepalived-%s-%d", h.id, labSeq.Add(1))
	conf := filepath.Join(l.dir, name+".conf")
	if err := os.WriteFile(conf, []byte(keepalivedConf(h, c)), 0o644); err != nil {
		l.t.Fatal(err)
	}
	pid := filepath.Join(l.dir, name+".pid")
	vrrpPid := filepath.Join(l.dir, name+".vrrp.pid")
	checkPid := filepath.Join(l.dir, name+".check.pid")
	r := l.start("keepalived", h, name, "keepalived", "--dont-fork", "--log-console", "--log-detail",
		"--no-syslog", "--vrrp", "-f", conf, "-p", pid, "-r", vrrpPid, "-c", checkPid)
	r.childPidFile = vrrpPid
	// The child must be known before anyone can crash it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := readPid(vrrpPid); err == nil {
			break
		}
		if !r.running() {
			l.t.Fatalf("keepalived in %s exited (%v) before writing its VRRP pid file", h.id, r.waitErr)
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("keepalived in %s wrote no VRRP pid file %s within 5s", h.id, vrrpPid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r
}

func keepalivedConf(h *host, c routerConf) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global_defs {\n\trouter_id hvr_%s\n\tvrrp_version %d\n}\n\n", h.id, c.version)
	fmt.Fprintf(&b, "vrrp_instance VI_1 {\n\tstate BACKUP\n\tinterface %s\n\tvirtual_router_id %d\n\tpriority %d\n",
		h.link, vrid, c.priority)
	fmt.Fprintf(&b, "\tadvert_int %s\n", strconv.FormatFloat(c.advert.Seconds(), 'f', -1, 64))
	if c.version == 2 {
		fmt.Fprintf(&b, "\tauthentication {\n\t\tauth_type PASS\n\t\tauth_pass %s\n\t}\n", authPass)
	}
	if c.nopreempt {
		b.WriteString("\tnopreempt\n")
	}
	if len(c.peers) > 0 {
		fmt.Fprintf(&b, "\tunicast_src_ip %s\n\tunicast_peer {\n", h.addr)
		for _, p := range c.peers {
			fmt.Fprintf(&b, "\t\t%s\n", p)
		}
		b.WriteString("\t}\n")
	}
	fmt.Fprintf(&b, "\tvirtual_ipaddress {\n\t\t%s dev %s\n\t}\n}\n", vipPrefix, h.link)
	return b.String()
}
