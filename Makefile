# Cairn: see README.md. Every target works on a fresh Debian 12 machine.
GO        ?= go
PREFIX    ?= /usr/local
DESTDIR   ?=
BIN       := bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/cairn-storage/cairn/daemon.Version=$(VERSION)
DATA      ?= $(CURDIR)/.cairn

.PHONY: build test test-go test-e2e test-long run bench install uninstall deps fuzz clean

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/cairnd ./cmd/cairnd
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/cairn ./cmd/cairn

deps:
	./scripts/deps.sh

# make test: install the test dependencies, then run every test.
test: deps build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...
	./scripts/test/run-all.sh

# Long runs of the randomized end-to-end tests (make test runs 20 rounds
# of the full-filesystem test and 10 of the crash test).
FULL_ROUNDS ?= 200
CRASH_ROUNDS ?= 100
test-long: deps build
	FULL_ROUNDS=$(FULL_ROUNDS) ./scripts/test/test-full-fs.sh
	CRASH_ROUNDS=$(CRASH_ROUNDS) ./scripts/test/test-crash.sh

# Long fuzzing run (the seed corpora run in make test): FUZZTIME=10m make fuzz
FUZZTIME ?= 60s
fuzz:
	$(GO) test ./nbd -run '^$$' -fuzz FuzzOptionParser -fuzztime $(FUZZTIME)
	$(GO) test ./nbd -run '^$$' -fuzz FuzzRequestParser -fuzztime $(FUZZTIME)

# make run: start cairnd on a local data dir (./.cairn), no config needed.
run: build
	./$(BIN)/cairnd --data-dir $(DATA)

bench: deps build
	./scripts/bench/nbd.sh

install: build
	./scripts/install.sh

uninstall:
	./scripts/install.sh --uninstall

clean:
	rm -rf $(BIN)
