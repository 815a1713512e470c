#!/usr/bin/env bash
# demo.sh (make demo): a MariaDB primary and two replicas on 127.0.0.1
# ports 13306-13308, and hamr in front of them with examples/demo.toml
# (writes on 7001, reads on 7002, admin on 8081). Ctrl-C stops everything
# and removes the demo's temporary directory.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin"
config=examples/demo.toml

if ! command -v mariadbd >/dev/null || ! command -v mariadb >/dev/null; then
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo apt-get update
	$sudo apt-get install -y mariadb-server mariadb-client
fi
[ -f "$config" ] || { echo "demo: $config not found" >&2; exit 1; }

dir=$(mktemp -d /tmp/hamr-demo.XXXXXX)
topology_pid=""
hamr_pid=""
tail_pid=""

# stop PID NAME: SIGTERM, then SIGKILL if it has not exited within 40 s.
stop() {
	local pid=$1 name=$2
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 400); do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
		sleep 0.1
	done
	echo "demo: $name (pid $pid) did not stop; killing it" >&2
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	trap - INT TERM EXIT
	echo
	echo "demo: stopping hamr and the MariaDB servers"
	stop "$tail_pid" tail
	stop "$hamr_pid" hamr
	stop "$topology_pid" "MariaDB servers" # stops its three servers by PID
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 0' INT TERM # Ctrl-C is how the demo ends

echo "demo: building hamr"
go build -o bin/hamr ./cmd/hamr
go build -o "$dir/topology" ./integration/cmd/topology
hamr=bin/hamr

echo "demo: starting MariaDB on 127.0.0.1:13306 (primary), 13307 and 13308 (replicas)"
"$dir/topology" --base-port 13306 --dir "$dir/db" >"$dir/topology.log" 2>&1 &
topology_pid=$!
for _ in $(seq 600); do
	grep -qx ready "$dir/topology.log" && break
	if ! kill -0 "$topology_pid" 2>/dev/null; then
		cat "$dir/topology.log" >&2
		echo "demo: the MariaDB servers did not start (ports 13306-13308 in use?)" >&2
		exit 1
	fi
	sleep 0.1
done
grep -qx ready "$dir/topology.log" || { cat "$dir/topology.log" >&2; echo "demo: MariaDB not ready after 60 s" >&2; exit 1; }

echo "demo: starting hamr run -c $config"
"$hamr" run -c "$config" 2>"$dir/hamr.log" &
hamr_pid=$!
for _ in $(seq 150); do
	"$hamr" ctl -c "$config" status >/dev/null 2>&1 && break
	if ! kill -0 "$hamr_pid" 2>/dev/null; then
		cat "$dir/hamr.log" >&2
		echo "demo: hamr exited" >&2
		exit 1
	fi
	sleep 0.1
done

cat <<EOF

hamr is running. In another terminal:

  Connect (writes go to the primary, reads alternate over the replicas):
    mariadb -h127.0.0.1 -P7001 -uapp -papp -e 'SELECT @@port'
    mariadb -h127.0.0.1 -P7002 -uapp -papp -e 'SELECT @@port'

  Watch:
    $hamr ctl -c $config status
    curl -s 127.0.0.1:8081/metrics | grep hamr_

  Fail over: kill the primary; the next write connection lands on 13307:
    kill -9 \$(cat $dir/db/s0/mariadbd.pid)

  Bring the old primary back (writes stay on 13307: the primary is sticky):
    kill -HUP $topology_pid

  Move writes back to the first destination on purpose:
    $hamr ctl -c $config reset-primary rw

Press Ctrl-C to stop hamr and the servers. hamr's log follows.

EOF
tail -n +1 -f "$dir/hamr.log" &
tail_pid=$!
status=0
wait "$hamr_pid" || status=$?
# Ctrl-C reaches hamr too, and hamr exits 0 when a signal stops it; the
# shell may see that exit before it runs its own INT trap.
[ "$status" -eq 0 ] && exit 0
echo "demo: hamr exited with status $status" >&2
exit 1
