# Two commands: `make run` and `make test`. Everything else here serves them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
DEVICE ?= cpu
PG_TEST_URL ?= postgres://postgres@127.0.0.1:5432/smolsite
# The Redis database the scaled-out tests use (and flush): keep it for them alone.
REDIS_TEST_URL ?= redis://127.0.0.1:6379/13

.PHONY: llama-cpp run test worker beat test-sqlite test-postgres test-redis bench bench-load bench-peers install install-test services clean

# llama-cpp-python is built from source once per version, CMake flags and CPU into $(WHEELHOUSE) and
# installed from there (tools/llama_cpp_wheel.py says why: AMX off, pip's cache bypassed). The
# version is the one pinned in pyproject.toml; extra flags come from CMAKE_ARGS (e.g. -DGGML_CUDA=on).
LLAMA_CPP_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
WHEELHOUSE ?= .wheelhouse
export CMAKE_ARGS

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Runs every time (a fraction of a second); reinstalls only when the wheel for this machine changes.
llama-cpp: $(PY)
	@wheel=$$($(PY) tools/llama_cpp_wheel.py $(LLAMA_CPP_VERSION) $(WHEELHOUSE)) || exit 1; \
	if [ "$$(cat $(VENV)/.llama-wheel 2>/dev/null)" != "$$wheel" ]; then \
	  echo "Installing $$(basename $$wheel)"; \
	  $(PY) -m pip install -q --no-deps --force-reinstall "$$wheel" && $(PY) -m pip install -q "$$wheel" \
	  && echo "$$wheel" > $(VENV)/.llama-wheel; \
	fi

# Stamps depend on pyproject.toml, so a second `make run` installs nothing.
$(VENV)/.stamp-run: pyproject.toml | llama-cpp
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-run pyproject.toml tests/plugin_dist/smolsite-hello/pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q ./tests/plugin_dist/smolsite-hello
	touch $@

install: llama-cpp $(VENV)/.stamp-run
install-test: llama-cpp $(VENV)/.stamp-test
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

run: install
	$(PY) manage.py migrate --noinput
	$(PY) -m daphne -b $(HOST) -p $(PORT) smolsite.asgi:application

# A device worker for the scaled-out mode (REDIS_URL set): one per device per host, holding its
# models once. Its threads each wait on one generation; the engine batches them (SMOLSITE_SLOTS).
WORKER_THREADS ?= 32
WORKER_NAME ?= $(DEVICE)
worker: install
	SMOLSITE_DEVICE=$(DEVICE) $(VENV)/bin/celery -A smolsite worker -Q device.$(DEVICE),maintenance -n $(WORKER_NAME)@%h \
	  --pool threads --concurrency $(WORKER_THREADS) --loglevel INFO

# Scaled out: the periodic jobs (the retention pass, SMOLSITE_RETENTION_DAYS). Run exactly one per
# site; it only schedules, and a `make worker` (maintenance queue) runs each job.
beat: install
	$(VENV)/bin/celery -A smolsite beat -s $(or $(SMOLSITE_VAR_DIR),var)/celerybeat-schedule --loglevel INFO

# PostgreSQL and Redis are machine services; start them if something stopped them.
services:
	@bash .ci/services.sh

test: install-test services lint test-sqlite test-postgres

# The apps' layers ([tool.importlinter] in pyproject.toml, docs/architecture.md): no upward import.
.PHONY: lint
lint: install-test
	$(VENV)/bin/lint-imports

# Each database gets two runs: everything embedded, then the scaled-out tests (tests/test_redis.py)
# in a process configured for Redis from the environment, as a served scaled-out site is.
test-sqlite:
	$(VENV)/bin/pytest -p no:cacheprovider -m "not redis"
	REDIS_URL=$(REDIS_TEST_URL) $(VENV)/bin/pytest -p no:cacheprovider -m redis

# nodb tests (engine, parsers, build checks) never touch a database: the SQLite run has run them.
test-postgres:
	DATABASE_URL=$(PG_TEST_URL) $(VENV)/bin/pytest -p no:cacheprovider -m "not browser and not redis and not nodb"
	DATABASE_URL=$(PG_TEST_URL) REDIS_URL=$(REDIS_TEST_URL) $(VENV)/bin/pytest -p no:cacheprovider -m redis

test-redis:
	REDIS_URL=$(REDIS_TEST_URL) $(VENV)/bin/pytest -p no:cacheprovider -m redis

# One at a time on a quiet machine: each compares against raw llama-cpp-python in the same run.
bench: install-test services
	$(PY) bench/run.py
	$(PY) bench/concurrency.py
	$(PY) bench/batch.py

bench-load: install-test services
	$(PY) bench/load.py

# smolsite beside llama.cpp's own llama-server (built once by tools/llama_server.py, same flags and
# key as the wheel) on the same model, N people at once each; PEERS_ARGS, e.g. --people 8 16 or --quick.
bench-peers: install-test services
	@server=$$($(PY) tools/llama_server.py $(LLAMA_CPP_VERSION) $(WHEELHOUSE)) || exit 1; \
	$(PY) bench/peers.py --server "$$server" $(PEERS_ARGS)

clean:
	rm -rf $(VENV) db.sqlite3 var test-artifacts
