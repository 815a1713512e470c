// Command topology runs a MariaDB primary and GTID replicas on 127.0.0.1
// until it is interrupted: the servers of the integration tests, for
// `make demo` and for trying hamr by hand.
//
// Usage:
//
//	topology [--base-port 13306] [--replicas 2] [--dir DIR]
//
// The primary listens on the base port and replica i on base port + i. It
// prints one line per server and then "ready". SIGHUP restarts any server
// that has stopped (killed to show a failover, say); SIGINT or SIGTERM stops
// them all and removes the directory unless --dir was given.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hamr-project/hamr/integration"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "topology: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	basePort := flag.Int("base-port", 0, "port of the primary; replica i gets base-port+i (0: free ports)")
	replicas := flag.Int("replicas", 2, "number of replicas")
	dir := flag.String("dir", "", "directory for the data directories (default: a temporary one, removed on exit)")
	flag.Parse()
	if *replicas < 0 {
		return fmt.Errorf("--replicas %d: must be 0 or more", *replicas)
	}
	opt := integration.Options{Dir: *dir, Replicas: *replicas}
	if *basePort != 0 {
		if *basePort < 1 || *basePort+*replicas > 65535 {
			return fmt.Errorf("--base-port %d: ports must be in 1-65535", *basePort)
		}
		for i := 0; i <= *replicas; i++ {
			opt.Ports = append(opt.Ports, *basePort+i)
		}
	}

	// An interrupt during start-up cancels it.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	topo, err := integration.StartTopology(ctx, opt)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	stop()
	if err != nil {
		return err
	}
	fmt.Print(topo)
	fmt.Println("ready")

	for sig := range sigs {
		if sig != syscall.SIGHUP {
			fmt.Printf("%v: stopping the servers\n", sig)
			return topo.Stop()
		}
		for i := range topo.Servers {
			if topo.PID(i) != 0 {
				continue
			}
			if err := topo.Restart(context.Background(), i); err != nil {
				fmt.Fprintf(os.Stderr, "topology: restart server %d: %v\n", i, err)
				continue
			}
			fmt.Printf("server %d restarted on port %d\n", i, topo.Servers[i].Port)
		}
	}
	return nil
}
