# Two entry points: `make report` builds reports/report.html on the embedded data,
# `make test` runs the default test suite. Each creates and fills .venv first when
# it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: report test venv clean-venv

report: $(STAMP)
	$(VENV)/bin/python run_all.py $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	$(VENV)/bin/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
