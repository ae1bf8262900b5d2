# Two entry points: `make report` builds reports/report.html on the embedded data,
# `make test` runs the default test suite. Each creates and fills .venv first when
# it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=
# A new .venv takes about 6 GB, most of it PyTorch's CUDA libraries, which pip installs
# even on machines without a GPU. Checking first turns a pip "No space left on device"
# halfway through the install into one message before it starts.
MIN_FREE_GB ?= 7

.PHONY: report test venv clean-venv

report: $(STAMP)
	$(VENV)/bin/python run_all.py $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || { \
	  free_kb=$$(df -Pk . | awk 'NR == 2 {print $$4}'); \
	  if [ "$$free_kb" -lt $$(( $(MIN_FREE_GB) * 1024 * 1024 )) ]; then \
	    echo "make: a new $(VENV) needs about $(MIN_FREE_GB) GB of free disk in $$(pwd)," \
	      "but only $$(( free_kb / 1024 / 1024 )) GB is free. Free some space and run make again," \
	      "or lower the check with MIN_FREE_GB=N if you know the install fits." >&2; \
	    exit 1; \
	  fi; \
	}
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	$(VENV)/bin/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
