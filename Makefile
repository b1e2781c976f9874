# Two commands on a fresh machine:  `make run` starts the backend, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
export LS_VENV ?= $(CURDIR)/.ls-venv

.PHONY: install run test unit e2e-deps bench docker-deps docker-test

# requirements-dev.txt: the service's requirements.txt plus the test tools (pytest, playwright).
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

## Start the ML backend on $PORT (default 9090) with $MODEL_PRESET (default cpu); its weights are
## fetched first where the network allows (offline: the backend starts and /health names what is missing).
run: install
	$(VENV)/bin/python -m backend.models fetch --preset $${MODEL_PRESET:-cpu} || echo "some weights are missing (see above); starting anyway"
	$(VENV)/bin/python -m backend

## Real Label Studio (own venv) and Debian's chromium for the end-to-end and browser suites.
e2e-deps:
	scripts/install-label-studio.sh
	scripts/install-browser.sh || echo "chromium could not be installed: browser tests will skip (fail if REQUIRE_E2E=1)"

## Every test: unit tests on the tiny preset, a real Label Studio server, a headless browser.
test: install e2e-deps
	$(VENV)/bin/python -m pytest

## Unit tests only (no Label Studio server, no browser).
unit: install
	$(VENV)/bin/python -m pytest -m "not e2e and not browser"

## Every benchmark (bench/results/*.json), then the end-to-end table (ratios to SAM's set_image).
bench: install
	for b in bench/bench_*.py; do PYTHONPATH=. $(VENV)/bin/python $$b || exit 1; done
	PYTHONPATH=. $(VENV)/bin/python bench/report.py

## Debian's Docker engine, docker-compose and debootstrap, and a running dockerd (root).
docker-deps:
	scripts/install-docker.sh

## Build the image, run and check it, then the compose stack with Label Studio (needs a Docker
## daemon; BASE_IMAGE / LABEL_STUDIO_IMAGE as in scripts/docker-test.sh).
docker-test:
	scripts/docker-test.sh
