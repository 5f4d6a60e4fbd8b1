# Cairn: see README.md. Every target works on a fresh Debian 12 machine.
GO        ?= go
PREFIX    ?= /usr/local
DESTDIR   ?=
BIN       := bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/cairn-storage/cairn/daemon.Version=$(VERSION) -X main.version=$(VERSION)
DATA      ?= $(CURDIR)/.cairn

.PHONY: build test test-go test-e2e test-long run bench bench-clone install uninstall deps fuzz clean

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

# Long runs: the model-based tests with more seeds, and the randomized
# end-to-end tests with more rounds (make test runs a few seeds of each,
# 20 rounds of the full-filesystem test and 10 of the crash test).
FIGURES_SEEDS ?= 40
FIGURES_STEPS ?= 400
FULL_ROUNDS ?= 200
CRASH_ROUNDS ?= 100
test-long: deps build
	CAIRN_FIGURES_SEEDS=$(FIGURES_SEEDS) CAIRN_FIGURES_STEPS=$(FIGURES_STEPS) $(GO) test -count=1 -timeout 60m -run TestFiguresAgainstModel ./cow
	FULL_ROUNDS=$(FULL_ROUNDS) ./scripts/test/test-full-fs.sh
	CRASH_ROUNDS=$(CRASH_ROUNDS) ./scripts/test/test-crash.sh

# Long fuzzing run of every fuzz target (func FuzzX in any package), each
# for FUZZTIME: FUZZTIME=1h make fuzz. Their seed corpora (testdata/fuzz)
# run in make test. A crash stops the run and leaves its input in the
# package's testdata/fuzz (docs/security.md).
FUZZTIME ?= 60s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "=== $$pkg $$t ($(FUZZTIME))"; \
			$(GO) test $$pkg -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -parallel $${FUZZPARALLEL:-2} || exit 1; \
		done; \
	done

# make run: start cairnd on a local data dir (./.cairn), no config needed.
run: build
	./$(BIN)/cairnd --data-dir $(DATA)

bench: deps build
	./scripts/bench/nbd.sh

# The clone and image benchmarks (docs/performance.md, "Clones and images").
bench-clone: deps build
	./scripts/bench/clone.sh

install: build
	./scripts/install.sh

uninstall:
	./scripts/install.sh --uninstall

clean:
	rm -rf $(BIN)
