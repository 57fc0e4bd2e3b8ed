PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean browsers

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/steelyard demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src/steelyard

test: $(STAMP) lint browsers
	$(BIN)/pytest -n 2 -q

# the dashboard tests drive Debian's chromium through Playwright (no `playwright install`)
browsers:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

bench: $(STAMP)
	bash bench/run.sh $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info
