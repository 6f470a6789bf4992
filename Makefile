# Two commands on a fresh machine (Python 3.11, no GPU): `make run` and `make test`.
# Each creates .venv and installs everything pinned (requirements.lock) before doing its job.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000

# Offline: no telemetry from any tool (flows/__init__.py's OFFLINE_ENV, checked by
# tests/code/test_offline_env.py); Prefect keeps its home in the project.
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PATH := $(CURDIR)/$(BIN):$(PATH)

PREFECT_POOL ?= qin-pool

.PHONY: install run test process-test lint data repro serve worker promote predict ui clean stack postgres integration-test \
	gpu-wheels gpu-rehearsal

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# Raw data: the synthetic default (params.yaml `data`) unless data/ already holds data (e.g. imported).
data: $(STAMP)
	@if [ ! -e data/train.parquet ]; then $(BIN)/qin data synth --out data; fi

run: data
	$(BIN)/python -m flows.qin_train

# The tests run in TEST_WORKERS processes (pytest-xdist): most of their time is process starts, imports and
# servers' start-up, which overlap; each worker has its own temporary folders and Prefect test server.
TEST_WORKERS ?= 2
test: $(STAMP) lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# The tests that run several training or registering processes at once (torchrun jobs, concurrent flow runs,
# racing registrations), marked `processes`: a later step of .ci/run, so that `make test` stays short.
process-test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m processes

# The team stack's integration test: PostgreSQL, MLflow and Prefect servers as local processes (tests/integration).
integration-test: $(STAMP) postgres
	$(BIN)/python -m pytest -m integration tests/integration

lint: $(STAMP)
	$(BIN)/ruff check qin flows qinstack tests bench
	$(BIN)/ruff format --check qin flows qinstack tests bench
	$(BIN)/mypy

repro: data
	$(BIN)/dvc repro

# A long-running command with the Prefect server PREFECT_API_URL names (the team stack's: `make stack`,
# `make up`), else a local one on 127.0.0.1:$(PREFECT_PORT): started (log in .prefect/server.log) unless one
# already answers there, and stopped after the command. SIGTERM or Ctrl-C reach the command as SIGTERM, and
# the server is stopped once the command has stopped its flow runs (flows/with_server.py).
WITH_SERVER := $(BIN)/python -m flows.with_server --port $(PREFECT_PORT) --

# Deployments qin-train/local and qin-score/local: the flows served by this process. In another shell:
#   export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api && .venv/bin/prefect deployment run qin-train/local
serve: data
	$(WITH_SERVER) $(BIN)/python -m flows.serve

# Deployments qin-train/pool, qin-ablation/pool, qin-embed-eval/pool and qin-score/pool: the process work pool
# $(PREFECT_POOL) (created if absent), the flows deployed from this checkout, and a worker that runs their flow
# runs. In another shell:
#   export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api && .venv/bin/prefect deployment run qin-train/pool
worker: data
	$(WITH_SERVER) sh -c '$(BIN)/prefect work-pool inspect $(PREFECT_POOL) >/dev/null 2>&1 \
		|| $(BIN)/prefect work-pool create $(PREFECT_POOL) --type process || exit 1; \
		$(BIN)/python -m flows.deploy_pool --pool $(PREFECT_POOL) || exit 1; \
		exec $(BIN)/python -m qinstack.worker --pool $(PREFECT_POOL)'

# The challenge's submission for data/test.parquet: `make predict [MODEL=champion|staging|N|path]` (default:
# params.yaml predict.model, i.e. the champion, else staging). Writes artifacts/predict/submission.zip.
predict: data
	$(BIN)/qin predict $(if $(MODEL),--model $(MODEL))

# Give a registered version an alias: `make promote TO=staging|production [VERSION=N]`.
promote: $(STAMP)
	$(BIN)/qin promote --to $(TO) $(if $(VERSION),--version $(VERSION))

ui: $(STAMP)
	@mkdir -p mlruns
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

# The team stack without containers: PostgreSQL, the MLflow server and the Prefect server as local processes
# under supervisord in the foreground (config rendered into .stack/ from qinstack/supervisord.conf.j2), with
# the commands and settings docker/compose.yaml uses (`python -m qinstack`), credentials in docker/.env
# (written when missing), state and logs in .stack/. Runs until Ctrl-C or SIGTERM. In another shell:
#   eval "$$(.venv/bin/python -m qinstack env)" && make worker      # then qin, prefect, mlflow use it
stack: $(STAMP) postgres
	$(BIN)/python -m qinstack up

# PostgreSQL's server programs, for `make stack` and the integration test: found on PATH or under
# /usr/lib/postgresql, else installed from Debian's packages (as root; its own cluster is not started).
POSTGRES_DEB ?= postgresql-15
postgres: $(STAMP)
	@$(BIN)/python -c "from qinstack.postgres import postgres_bindir; postgres_bindir()" 2>/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing $(POSTGRES_DEB) (Debian)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				-o Dpkg::Options::=--force-confold $(POSTGRES_DEB) >/dev/null; \
			command -v pg_ctlcluster >/dev/null && pg_ctlcluster stop 15 main 2>/dev/null; true; \
		else echo "PostgreSQL's server is not installed: install it (Debian: $(POSTGRES_DEB)) or set POSTGRES_BIN"; \
			exit 1; fi; }

clean:
	rm -rf artifacts metrics

# ---- The GPU check (bench/gpu_check.sh; docs/performance.md "The GPU check") ------------------------------
# The wheels the GPU image lacks (bench/gpu-wheels.txt), for its Python 3.12 on manylinux x86-64, into
# .gpu-wheels/ (git-ignored; carried with the tree to the GPU machine, 64 MiB at most).
GPU_PLATFORMS := $(foreach n,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,--platform $(n)_x86_64)
gpu-wheels: $(STAMP)
	@mkdir -p .gpu-wheels
	@reqs=$$(grep -v '^\s*#' bench/gpu-wheels.txt | grep -v '^\s*$$' || true); \
	if [ -n "$$reqs" ]; then $(BIN)/pip download --quiet --disable-pip-version-check --no-deps \
		--only-binary=:all: --python-version 3.12 --implementation cp $(GPU_PLATFORMS) -d .gpu-wheels $$reqs; \
	else echo "bench/gpu-wheels.txt names no wheel: the GPU image has every package the check imports"; fi
	@du -sh .gpu-wheels

# The GPU check rehearsed on the CPU at tiny sizes, and every module its phases import checked against the
# GPU image's packages (docs/performance.md) and .gpu-wheels/ (downloaded first: what the GPU machine would
# carry).
gpu-rehearsal: $(STAMP) gpu-wheels
	PYTHON=$(BIN)/python bench/gpu_check.sh --device cpu --check-imports --out .gpu-check/cpu

# ---- The team stack in containers: docker/compose.yaml, one image (docker/Dockerfile) ------------------
# `make up` writes docker/.env with generated passwords when it is missing (plain $(PYTHON): `python -m
# qinstack secrets` needs only the standard library), builds the image and waits until every service is
# healthy.
# `make down` stops the stack and keeps its volumes (databases, artifacts, data); `docker compose -f
# docker/compose.yaml down -v` would delete them. Host ports: MLFLOW_PORT, PREFECT_PORT, SERVING_PORT in
# docker/.env (set them there, not in the shell: every later `docker compose` call, and `python -m qinstack env`,
# reads them from that file).
COMPOSE := docker compose -f docker/compose.yaml

.PHONY: up down container-test

up:
	$(PYTHON) -m qinstack secrets docker/.env
	QIN_GIT_COMMIT=$$(git rev-parse HEAD 2>/dev/null || echo unknown) $(COMPOSE) up -d --build --wait
	@echo "MLflow UI:   http://$$($(COMPOSE) port mlflow 5000)  (log in with MLFLOW_TRACKING_USERNAME/PASSWORD of docker/.env)"
	@echo "Prefect UI:  http://$$($(COMPOSE) port prefect 4200)  (PREFECT_API_AUTH_STRING of docker/.env)"
	@echo "Serving:     http://$$($(COMPOSE) port serving 5001)/invocations  (models:/qin-ctr@champion, else @staging)"
	@echo "Point this shell at the stack:  eval \"\$$($(PYTHON) -m qinstack env docker/.env)\""

down:
	$(COMPOSE) down

# Builds the image and runs the stack under a project name, env file and free ports of its own (never the
# one `make up` runs); needs a Docker engine (.ci/container starts one). -s: it prints its build, up and
# run times.
container-test: $(STAMP)
	$(BIN)/python -m pytest -s -m container tests/container
