# Voicenote: every command a newcomer needs. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
CRD_STAMP := tests/crd/node_modules/.installed

.DEFAULT_GOAL := help
.PHONY: help install karapace run test test-unit test-integration test-e2e lint typecheck topics clean bench-engine bench-pipeline bench-e2e bench-completion bench-api bench-s1mini bench-client capacity dashboard bench-faults bench-streaming playground-screenshot bench-broker-storage bench-storage-requests client-schemas

help: ## list the commands
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

# What `make run` needs and no more: the service with the CPU voice (no torch, no test tools).
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(RUN_STAMP)

# Everything: the service, CPU torch and the S1-mini engine, test and dev tools.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[s1mini,test,dev]'
	# The S1-mini parity reference: fish-speech's model code without its heavy optional dependencies.
	$(BIN)/pip install -q --no-deps fish-speech==0.1.0 descript-audio-codec==1.0.0
	touch $(STAMP) $(RUN_STAMP)

# The CRD schemas (KEDA, Karpenter, Prometheus Operator) the manifest tests validate against; needs Node.js.
$(CRD_STAMP): tests/crd/package.json tests/crd/package-lock.json
	npm ci --prefix tests/crd --no-audit --no-fund --loglevel=error
	touch $(CRD_STAMP)

install: $(STAMP) $(CRD_STAMP) ## create .venv and install Voicenote with test tools (and CPU torch for the S1-mini engine)

karapace: ## optional, not in CI: .venv-karapace from a Karapace source tree (KARAPACE_SRC=dir; not on PyPI): the compose boot test then runs the real registry
	bash tests/karapace_venv.sh

run: $(RUN_STAMP) ## install the service alone (CPU voice; `make install` adds torch, S1-mini and test tools) and run it here: broker, Redis, API on :8000, workers (Ctrl-C stops all)
	$(BIN)/voicenote run

# The suite's end-to-end tests mostly wait on their processes: 3 pytest workers keep 2 cores busy (docs/testing.md).
# Each worker takes whole files (--dist loadfile), so a module's shared stack stays in one process.
TEST_WORKERS ?= 3

test: $(STAMP) $(CRD_STAMP) ## install and run the whole suite (unit, integration, end-to-end), TEST_WORKERS (3) files at a time
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

test-unit: $(STAMP) $(CRD_STAMP) ## fast tests of the pure parts
	$(BIN)/python -m pytest -q tests/unit

test-integration: $(STAMP) ## tests against the real broker, Redis and S3 server
	$(BIN)/python -m pytest -q tests/integration

test-e2e: $(STAMP) ## API and workers as real processes
	$(BIN)/python -m pytest -q tests/e2e

lint: $(STAMP) ## ruff, and the layering contract (lint-imports: schemas < voicenote < producer_api | stream_workers < ops)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP) ## mypy over the packages and the client ([tool.mypy] files; also enforced by make test)
	$(BIN)/mypy

client-schemas: ## copy schemas/avro/ (and the request rules) into the standalone client, clients/python/ (a test fails while they differ)
	rm -rf clients/python/src/voicenote_client/avro
	cp -r schemas/avro clients/python/src/voicenote_client/avro
	cp schemas/validation.py clients/python/src/voicenote_client/_validation.py

topics: $(STAMP) ## print the topic catalog
	$(BIN)/voicenote topics list

bench-completion: $(STAMP) ## benchmark result cache, storage and webhook delivery (writes results/)
	$(BIN)/python -m ops.bench.completion

bench-engine: $(STAMP) ## engine audio-seconds per second at batch 1, 2, 4, 8 -> results/bench_engine.json
	$(BIN)/python -m ops.bench.engine

bench-pipeline: $(STAMP) ## pipeline ceiling with the zero-cost engine -> results/bench_pipeline.json (BASELINE=dir: another tree beside it)
	$(BIN)/python -m ops.bench.pipeline $(if $(BASELINE),--baseline-src $(BASELINE))

bench-e2e: $(STAMP) ## real voice, HTTP to completion at several loads -> results/bench_e2e.json
	$(BIN)/python -m ops.bench.e2e

dashboard: $(STAMP) ## the dashboard's queries against Prometheus over a real run -> docs/dashboard.png (needs Debian's prometheus, matplotlib)
	$(BIN)/pip install -q matplotlib
	$(BIN)/python -m ops.observability.plot_dashboard

clean: ## remove the virtual environment and local data
	rm -rf $(VENV) var

playground-screenshot: $(STAMP) ## the playground in headless chromium -> docs/playground.png (needs Debian's chromium)
	VOICENOTE_UPDATE_SCREENSHOT=1 $(BIN)/python -m pytest -q tests/e2e/test_playground.py -k speak_streams

bench-streaming: $(STAMP) ## streaming speech: time to first byte vs the whole job, 1,000 characters -> results/bench_streaming.json
	$(BIN)/python -m ops.bench.streaming

bench-api: $(STAMP) ## producer API: accepted requests/s and p50/p99 at rising concurrency (broker + Redis, workers off)
	$(BIN)/python -m ops.bench.api

bench-s1mini: $(STAMP) ## S1-mini: operators and inductor kernels per step, tiny continuous vs static, codec dtypes, compiled start-up -> results/s1mini_cpu.json (GPU: python -m ops.bench.s1mini --device cuda)
	$(BIN)/python -m ops.bench.s1mini --device cpu --modes ops,static,sdpa,kernels,codec --batch-sizes 1,2,4 --codec-frames 4 --out results/s1mini_cpu.json
	$(BIN)/python -m ops.bench.s1mini --device cpu --modes tiny_continuous --threads 1 --codec-threads 1 --update --out results/s1mini_cpu.json
	$(BIN)/python -m ops.bench.s1mini --device cpu --tiny --modes startup --compile --slots 4 --capacity 256 --update --out results/s1mini_cpu.json

capacity: $(STAMP) ## fleet size and cost from the measured S1-mini results (results/s1mini_cuda.json, else _cpu)
	$(BIN)/python -m ops.bench.capacity

bench-client: $(STAMP) ## client publish/read rates, dlq redrive rate (run twice: publishes once), submit --rate pacing -> results/bench_client.json
	$(BIN)/python -m ops.bench.client

bench-faults: $(STAMP) ## faults at ~200 jobs each (Redis emptied, broker restart on disk and on memory, broker + storage restart, kill -9 per worker, 300 concurrent sync requests) -> results/bench_faults.json
	$(BIN)/python -m ops.bench.faults

bench-storage-requests: $(STAMP) ## CPU per S3 request (GET, PUT, LIST) of the broker's two disk storages, diskstore and SeaweedFS -> results/storage_requests.json
	$(BIN)/python -m ops.bench.storage_requests

bench-broker-storage: $(STAMP) ## broker storage in one run: memory://, s3:// on ops.diskstore (the default), SeaweedFS, moto, s3rver (-> results/broker_storage.json); then the whole stack per storage: idle CPU, sync p50, first byte, 1,000-note burst (-> results/broker_stack.json)
	npm ci --prefix ops/bench/s3rver --no-audit --no-fund --loglevel=error
	$(BIN)/python -m ops.bench.broker_storage
	$(BIN)/python -m ops.bench.broker_stack
