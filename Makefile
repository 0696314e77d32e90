# The two quick-start commands: `make serve` and `make test`. Both install what they need
# into .venv first (a stamp file keeps repeat runs instant).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install serve test test-all test-fast lint bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/graddoctor serve

# CI's suite: everything but the exports of the larger model families (marked slow).
test: $(STAMP)
	bash scripts/test-prereqs.sh
	$(BIN)/python -m pytest -q -m 'not slow'

test-all: $(STAMP)
	bash scripts/test-prereqs.sh
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow and not browser and not service'

lint: $(STAMP)
	$(BIN)/ruff check diagnostics service tests bench

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)
