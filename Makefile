# Two commands do all the set-up: `make demo` and `make test`.
# TORCH_SPEC picks the torch build, e.g. TORCH_SPEC=torch==2.13.0 (the CPU build on our CI machines).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP = $(VENV)/bin/python -m pip
STAMP = $(VENV)/.installed-$(subst =,_,$(subst <,_,$(subst >,_,$(TORCH_SPEC))))

.PHONY: install demo test test-quick clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test]"
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/rethink demo --out demo-out

test: install
	$(VENV)/bin/python -m pytest -q

test-quick: install
	$(VENV)/bin/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo-out runs results .pytest_cache
