SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

GO       ?= go
BIN      := bin/mcpcluster
# A count, not a duration: go1.26's fuzz coordinator can report "context
# deadline exceeded" when a duration ends while a worker is busy (fixed in
# go1.27, go.dev/issue/75804). About 10 s per target on the 2-core machine.
FUZZTIME ?= 200000x

IMAGE    ?= mcpcluster:dev
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt

.PHONY: build run test fuzz lint bench bench-go chaos chaos-short image compose-up compose-down clean

## build: static binary in bin/mcpcluster
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/mcpcluster

## run: a local 3-node cluster on loopback (ports 8700-8722); Ctrl-C stops it
run: build
	./$(BIN) local

## test: vet, every test with the race detector (integration tests run real
## processes of the binary built here), the decoder fuzz targets, and a
## short chaos run
test: build
	$(GO) vet ./...
	MCPCLUSTER_BIN=$(abspath $(BIN)) $(GO) test -race -count=1 -timeout 30m ./...
	$(MAKE) fuzz
	$(MAKE) chaos-short

## fuzz: run each fuzz target for FUZZTIME (executions)
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZTIME) ./fsm/
	$(GO) test -run='^$$' -fuzz='^FuzzRestore$$' -fuzztime=$(FUZZTIME) ./fsm/
	$(GO) test -run='^$$' -fuzz='^FuzzCheck$$' -fuzztime=$(FUZZTIME) ./fsm/

## lint: formatting, vet and staticcheck
lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

## bench: the standard benchmark on a local 3-node cluster it starts, each
## figure beside bare mcp-go, then (with docker) 1 node against 3 in
## containers held to 0.3 CPU each; writes docs/benchmarks.md, .png, .json
bench: build
	@img=; if docker version >/dev/null 2>&1; then $(MAKE) --no-print-directory image; img="--image $(IMAGE)"; \
	else echo "bench: no docker: the scaling runs are skipped"; fi; \
	./$(BIN) bench suite --out docs/benchmarks.md $$img

## bench-go: the Go benchmarks (FSM, cluster core, front door, integration)
bench-go: build
	$(GO) test -run='^$$' -bench=. ./fsm/ ./mcp/
	$(GO) test -run='^$$' -bench=. -benchtime=20000x ./cluster/
	MCPCLUSTER_BIN=$(abspath $(BIN)) $(GO) test -run='^$$' -bench='ClusterWrite|ToolCall|Backpressure' -benchtime=5000x -timeout 30m ./integration/
	MCPCLUSTER_BIN=$(abspath $(BIN)) $(GO) test -run='^$$' -bench='LeaderFailover|GossipFailureDetection' -benchtime=5x -timeout 30m ./integration/

## chaos-short: 3 nodes, each fault once under load, checked (about 3 minutes)
chaos-short: build
	MCPCLUSTER_BIN=$(abspath $(BIN)) $(GO) test -count=1 -run '^TestChaos$$' -v -timeout 15m ./integration/ -args -chaos short -chaos.out $(abspath chaos-out) | grep -vE '^\s+time=|=== start'

## chaos: 3 nodes (two rounds of faults) and 5 nodes, checked (about 10 minutes)
chaos: build
	MCPCLUSTER_BIN=$(abspath $(BIN)) $(GO) test -count=1 -run '^(TestChaos|TestPartitions)$$' -v -timeout 30m ./integration/ -args -chaos full -chaos.out $(abspath chaos-out) | grep -vE '^\s+time=|=== start'

## image: the container image $(IMAGE) (FROM scratch: the static binary, a CA
## bundle, a non-root user); nothing is pulled
image:
	@test -r $(CA_BUNDLE) || { echo "image: no CA bundle at $(CA_BUNDLE) (set CA_BUNDLE=...)"; exit 1; }
	rm -rf bin/image && mkdir -p bin/image/data
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o bin/image/mcpcluster ./cmd/mcpcluster
	cp $(CA_BUNDLE) bin/image/ca-certificates.crt
	docker build -q -t $(IMAGE) -f deploy/Dockerfile bin/image

## compose-up: a secured 3-node cluster in containers (HTTP on 127.0.0.1:8700,
## :8710, :8720); the admin token: docker-compose -f deploy/compose.yaml -p mcpcluster run --rm -T token
compose-up: image
	docker-compose -f deploy/compose.yaml -p mcpcluster up -d

## compose-down: stop it and remove its volumes
compose-down:
	docker-compose -f deploy/compose.yaml -p mcpcluster down -v

clean:
	rm -rf bin data chaos-out
