// Command hamr is a high-availability MySQL router: an L4 proxy with
// read-write and read-only ports, MySQL-aware health checks, and a
// keepalived-style virtual IP, in one daemon driven by one TOML file.
//
// Usage:
//
//	hamr run   -c FILE                          run the daemon in the foreground
//	hamr check -c FILE                          validate a configuration file
//	hamr ctl   (-c FILE | --admin ADDR) status [--json]
//	hamr ctl   (-c FILE | --admin ADDR) reset-primary ROUTE
//	hamr ctl   (-c FILE | --admin ADDR) reload
//	hamr version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/hamr-project/hamr/conf"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usage = `usage:
  hamr run   -c FILE                          run the daemon in the foreground
  hamr check -c FILE                          validate a configuration file
  hamr ctl   (-c FILE | --admin ADDR) [--token T] status [--json]
  hamr ctl   (-c FILE | --admin ADDR) [--token T] reset-primary ROUTE
  hamr ctl   (-c FILE | --admin ADDR) [--token T] reload
  hamr version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "ctl":
		return cmdCtl(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "hamr %s\n", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "hamr: unknown command %q\n%s", args[0], usage)
	return 2
}

// configFlag parses "-c FILE" for run and check.
func configFlag(name string, args []string, stderr io.Writer) (string, bool) {
	fs := flag.NewFlagSet("hamr "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("c", "/etc/hamr/hamr.toml", "configuration `file`")
	fs.StringVar(file, "config", "/etc/hamr/hamr.toml", "configuration `file`")
	if err := fs.Parse(args); err != nil {
		return "", false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "hamr %s: unexpected argument %q\n", name, fs.Arg(0))
		return "", false
	}
	return *file, true
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	file, ok := configFlag("check", args, stderr)
	if !ok {
		return 2
	}
	cfg, err := conf.Load(file)
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (%d routes, %d vrrp instances)\n", file, len(cfg.Routes), len(cfg.VRRP))
	return 0
}

// printConfigError prints a configuration error, one problem per line.
func printConfigError(w io.Writer, err error) {
	var list *conf.Errors
	if errors.As(err, &list) {
		fmt.Fprintln(w, list.Error())
		return
	}
	fmt.Fprintf(w, "hamr: %v\n", err)
}
