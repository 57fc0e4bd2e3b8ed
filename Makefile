PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUILT := $(VENV)/.built
SOURCES := $(shell find src/steelyard -name '*.py')

.PHONY: demo test test-compiled test-python lint bench build clean browsers

# the editable install itself compiles nothing (STEELYARD_COMPILE=0): `build` does, in place,
# with the venv's mypy, and again whenever a source changes
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	STEELYARD_COMPILE=0 $(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# the data path's modules compiled with mypyc (setup.py's COMPILED), beside their sources;
# touched after, because an edit that changes no C (a comment) leaves the old files, and
# steelyard/_native.py runs the sources when a compiled module looks older than its .py.
# Without a C compiler the demo still runs, on the sources (`make test` insists: see
# test-compiled)
$(BUILT): $(STAMP) setup.py $(SOURCES)
	@if $(BIN)/python setup.py --quiet build_ext --inplace > $(VENV)/build.log 2>&1; then \
		find src -name '*.so' -exec touch {} + ; \
	else \
		tail -n 20 $(VENV)/build.log; \
		echo "make build: compiling the data path failed (log: $(VENV)/build.log);" \
			"Steelyard runs its Python sources (about a third more CPU per request);" \
			"once fixed: rm $(BUILT) && make build"; \
	fi
	touch $(BUILT)

build: $(BUILT)

demo: $(BUILT)
	$(BIN)/steelyard demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench setup.py
	$(BIN)/ruff format --check src tests bench setup.py
	$(BIN)/mypy src/steelyard

# the whole suite twice: against the compiled build, then against the Python sources (with an
# eager cyclic GC: tests/integration/conftest.py)
test: lint browsers test-compiled test-python

test-compiled: $(BUILT)
	STEELYARD_EXPECT_BUILD=compiled $(BIN)/pytest -n 2 -q

test-python: $(STAMP)
	STEELYARD_PURE_PYTHON=1 STEELYARD_EXPECT_BUILD=python STEELYARD_TEST_EAGER_GC=1 $(BIN)/pytest -n 2 -q

# the dashboard tests drive Debian's chromium through Playwright (no `playwright install`)
browsers:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

bench: $(BUILT)
	bash bench/run.sh $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info
	find src -name '*.so' -delete
