# Make targets used by humans and by .ci/run.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint format typecheck bench check-config clean

install:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test]'

test:
	$(VENV)/bin/pytest

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck:
	$(VENV)/bin/mypy

bench:
	$(PY) -m bench all

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
