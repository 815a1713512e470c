# hamr: a high-availability MySQL router.
#
#   make demo    install what is missing, start a primary + two replicas on
#                loopback and hamr in front of them
#   make test    install what is missing, vet, and run every test (race
#                detector on), integration tests with MariaDB and network
#                namespaces included
#   make bench   hamr beside a direct connection and HAProxy

export PATH := /usr/local/go/bin:$(PATH)
GO ?= go

.PHONY: all build demo test vet fuzz bench deps clean

all: build

build:
	$(GO) build -o bin/hamr ./cmd/hamr

demo:
	scripts/deps.sh demo
	scripts/demo.sh

# -count=1: the integration tests run the hamr binary they build, which
# go test's cache does not see; never report a stale pass.
test:
	scripts/deps.sh test
	$(GO) vet ./...
	test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; exit 1; }
	$(GO) test -race -count=1 -timeout 20m ./...
	# The proxy's tests again with the experimental kernel relay on,
	# handing each session to the kernel at the server's first reply.
	HAMR_TEST_KERNEL_RELAY=1 $(GO) test -race -count=1 -timeout 10m ./proxy

# Short coverage-guided runs of the fuzzers (not part of `make test`).
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 60s ./conf
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 60s ./vip
	$(GO) test -run '^$$' -fuzz FuzzPackets -fuzztime 60s ./health

bench:
	scripts/deps.sh bench
	$(GO) run ./bench $(BENCHFLAGS)

clean:
	rm -rf bin
