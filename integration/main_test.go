package integration

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// hamrBin is the hamr binary built once by TestMain; hamrBuildErr says why
// it could not be built (tests that need it fail with that message).
var (
	hamrBin      string
	hamrBuildErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	ci := os.Getenv("CI") == "true"
	if testing.Short() && !ci {
		fmt.Println("integration: skipped in -short mode")
		return 0
	}
	if _, err := MariaDBPath(); err != nil {
		if ci {
			fmt.Fprintf(os.Stderr, "integration: %v; CI=true, so this is a failure (make test installs mariadb-server and mariadb-client)\n", err)
			return 1
		}
		fmt.Printf("integration: skipped: %v (make test installs it)\n", err)
		return 0
	}
	if _, err := exec.LookPath("mariadb-install-db"); err != nil {
		fmt.Fprintf(os.Stderr, "integration: mariadb-install-db not found: %v (install mariadb-server)\n", err)
		return 1
	}

	dir, err := os.MkdirTemp("", "hamr-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	hamrBin = filepath.Join(dir, "hamr")
	hamrBuildErr = build(hamrBin, "github.com/hamr-project/hamr/cmd/hamr")
	return m.Run()
}

// build compiles pkg into out with the go command that runs the tests.
func build(out, pkg string) error {
	gocmd := "go"
	if root := os.Getenv("GOROOT"); root != "" {
		gocmd = filepath.Join(root, "bin", "go")
	}
	args := []string{"build", "-o", out}
	if raceEnabled {
		// The daemon gets the race detector too: a race in hamr makes it
		// exit non-zero, which fails the test that ran it.
		args = append(args, "-race")
	}
	cmd := exec.Command(gocmd, append(args, pkg)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}
