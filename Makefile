# The two quick-start commands: `make serve` and `make test`. Both install what they need
# into .venv first (a stamp file keeps repeat runs instant).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install serve test test-all test-fast lint bench schema bench-trainability \
	bench-trainability-label bench-trainability-validation bench-trainability-reseed

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/graddoctor serve

# CI's suite: lint and type check, then everything but the exports of the larger model families
# (marked slow). mypy checks diagnostics/ and service/ as [tool.mypy] in pyproject.toml says.
test: $(STAMP)
	bash scripts/test-prereqs.sh
	$(BIN)/ruff check diagnostics service tests bench scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m 'not slow'

test-all: $(STAMP)
	bash scripts/test-prereqs.sh
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow and not browser and not service'

lint: $(STAMP)
	$(BIN)/ruff check diagnostics service tests bench scripts
	$(BIN)/mypy

# report.schema.json from the pydantic report models; a test fails when it is not current.
schema: $(STAMP)
	$(BIN)/python scripts/report_schema.py

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Trainability benchmark (docs/trainability.md): score GradDoctor and the anchors' one-batch rules
# against labels made by training each model (cached in bench/trainability/labels.json). A few
# minutes on one core. `bench-trainability-label` retrains every model (~15 min of CPU, one thread).
bench-trainability: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.trainability.score

bench-trainability-label: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.trainability.label --retrain

# The out-of-sample check that rejected the chain-ratio rule (docs/trainability.md): measure and
# diagnose the validation models (a minute); add --label to train the unlabelled ones.
bench-trainability-validation: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.trainability.validation

# How much a label depends on the training batches' seed (docs/trainability.md): compare the
# seeds retrained under bench/trainability/reseed/ (seconds). To retrain one seed (~45 min, one
# core): python -m bench.trainability.reseed --label --seed 8
bench-trainability-reseed: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.trainability.reseed
