# Every target creates .venv when missing; torch is pinned (2.13.0, CPU wheel from local disk).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test test-slow lint fuzz bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,flower,ray,gpu]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/fedpress compare --scenario digits --jobs 2 --target 0.9 --out results/digits

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest src tests -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest tests -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

fuzz: $(STAMP)
	FEDPRESS_FUZZ_N=$${N:-1000000} $(BIN)/python -m pytest tests/conformance/test_fuzz.py -q

bench: $(STAMP)
	$(BIN)/fedpress bench codecs --size 10000000

clean:
	rm -rf $(VENV) results .pytest_cache
