#!/usr/bin/env bash
# deps.sh installs the Debian packages hamr's demo, tests and benchmarks
# need, and only those that are missing. Usage: scripts/deps.sh [demo|test|bench]
set -euo pipefail

want=(mariadb-server mariadb-client)
case "${1:-test}" in
demo) ;;
test) want+=(keepalived haproxy sysbench iproute2 util-linux procps) ;;
bench) want+=(haproxy sysbench procps) ;;
*) echo "usage: $0 [demo|test|bench]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "installing: ${missing[*]}"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -q
	# policy-rc.d keeps the packages' own services from starting: hamr's
	# tests and demo start their own servers on their own ports.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
		$sudo chmod +x /usr/sbin/policy-rc.d
		trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v go >/dev/null; then
	if [ -x /usr/local/go/bin/go ]; then
		echo "go is at /usr/local/go/bin; add it to PATH" >&2
	else
		echo "Go 1.26 is required (https://go.dev/doc/install)" >&2
		exit 1
	fi
fi
