# Two commands matter: `make run` (a local 3-member cluster under 3 stewards) and `make test` (every test).
# Both install what is missing first, so they work on a brand-new machine.
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps npm-deps etcd-deps build typecheck test run clean bench

all: build

deps: npm-deps etcd-deps

npm-deps: node_modules/.steward-installed

node_modules/.steward-installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# Debian's etcd 3.4 is what the tests and the embedded default run; a newer etcd/etcdutl on PATH is used as is.
etcd-deps:
	@if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then \
	  echo "etcd not found on PATH: installing Debian's etcd-server and etcd-client"; \
	  $(SUDO) apt-get update && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client; \
	fi

build: npm-deps
	npx tsc -p tsconfig.json

typecheck: npm-deps
	npx tsc -p test/tsconfig.json

test: deps build typecheck
	npx vitest run

run: deps build
	node dist/cli/local-cluster.js

# Prints numbers (snapshot: BENCH_DB_MB, BENCH_RUNS; idle cost: BENCH_IDLE_SECONDS); not part of `make test`.
bench: deps build
	npx vitest run --config vitest.bench.config.ts

clean:
	rm -rf dist
