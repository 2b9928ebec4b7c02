# The book's two commands are `make test` and `make book` (see README.md).
# Every target makes its own prerequisites from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
ONLY ?=
PROFILE ?= mini
LANES ?= 1
BOOK_NOTEBOOKS := $(if $(ONLY),notebooks/$(ONLY).ipynb,$(NOTEBOOKS))

.PHONY: venv data test unit smoke-notebooks fresh html offline-check book bench clean lab browser

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

data: $(VENV)/.installed
	source $(BIN)/activate && bash scripts/fetch_offline_data.sh

## make test: unit tests, smoke runs of every notebook, a chapter in JupyterLab + Chromium, staleness check, book build, offline check
test: venv data html $(VENV)/.lab-installed browser
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

## make browser: Chromium for the browser tests (found, or the Debian package installed with apt-get as root)
browser: venv
	$(BIN)/python scripts/check_offline_html.py --install-only

unit: venv data  ## quick feedback: no notebook runs, no tests marked slow
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not notebooks and not slow" tests

## make book: execute every notebook at the mini profile into book/, then build the HTML
## Each chapter's time goes to book/results/run_times.csv; from an empty cache: NBS_CACHE=$$(mktemp -d) make book
## LANES=2 runs two chapters at a time, one torch thread each (they share the cache's models through its locks)
book: venv data
	$(BIN)/python -m nbs_lib.report.book_build --profile $(PROFILE) --lanes $(LANES) $(BOOK_NOTEBOOKS)
	$(BIN)/python -m nbs_lib.report.summary
	$(MAKE) html

html: venv
	rm -rf _build/html
	$(BIN)/jupyter-book build . -W -n --keep-going
	bash scripts/offline_assets.sh _build/html

## make lab: JupyterLab in the venv, started on localhost with the chapters open (results go to scratch/)
lab: venv data $(VENV)/.lab-installed
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=$(CURDIR) notebooks/
$(VENV)/.lab-installed: $(VENV)/.installed requirements-lab.txt requirements.txt
	$(BIN)/pip install --quiet -c requirements.txt -r requirements-lab.txt
	touch $@

bench: venv data
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf _build

## make rehearse: the paper path rehearsed on a CPU: stand-ins of the paper's datasets and weights, every notebook at profile=paper with tiny overrides (tests/rehearsal, issue 21)
.PHONY: rehearse
rehearse: venv data
	NBS_REHEARSAL=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_rehearsal.py
