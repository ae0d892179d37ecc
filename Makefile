# One-command set-up on a fresh Linux machine with Python 3.11: `make demo`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint clean postgres chromium
install: $(STAMP)

# Debian's and Ubuntu's own Python lacks ensurepip until python3.X-venv is installed: installed here if missing
# (after an apt-get update when a fresh image's package lists are empty).
PYVENV = python$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && \
	  { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq "$(PYVENV)" || \
	    { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq "$(PYVENV)"; }; } && \
	  $(PYTHON) -m venv $(VENV); }

# torch first, pinned: it comes as a CPU build from the machine's local wheel; a bare requirement would pull
# a multi-GB CUDA build (../shared/STACK.md). pip byte-compiles the 44,000 files one at a time as it installs;
# compiled afterwards on every core, `make install` in a fresh clone took 128 s instead of 164 s (2 cores). A few
# files are for newer Pythons (torch's py312 test helpers) and do not compile: pip skips those too (`|| true`).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check --no-compile torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check --no-compile -e ".[dev]"
	$(BIN)/python -m compileall -qq -j0 $(VENV)/lib || true
	touch $@

demo: install
	$(BIN)/aimass quickstart

# The event log's tests run on Postgres too (scale-out by URL): the server binaries come from Debian's package.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || \
	  { echo "installing postgresql (tests/events runs the event log on it)"; \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null 2>&1 || \
	    { $(SUDO) apt-get update -qq >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null 2>&1; }; } || \
	  echo "postgresql could not be installed: the Postgres cases of tests/events will skip"

# The console's browser test loads every page in Debian's headless chromium.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { echo "installing chromium (tests/dashboards loads the console in it)"; \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { $(SUDO) apt-get update -qq >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1; }; } || \
	  echo "chromium could not be installed: the console's browser test will skip"

# pytest exits 5 when it collects nothing; that is not a failure of the suite's own making.
test: install postgres chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

lint: install
	$(BIN)/ruff check platform tests pipelines benchmarks bentos dashboards

clean:
	-$(BIN)/aimass deployments shutdown
	-$(BIN)/aimass console --stop
	rm -rf $(VENV) .aimass
