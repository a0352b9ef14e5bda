# Two commands do all the set-up: `make demo` and `make test`.
# TORCH_SPEC picks the torch build, e.g. TORCH_SPEC=torch==2.13.0 (the CPU build on our CI machines).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP = $(VENV)/bin/python -m pip
STAMP = $(VENV)/.installed-$(subst =,_,$(subst <,_,$(subst >,_,$(TORCH_SPEC))))
# Inception V3 (Table 2) needs torchvision, which imports only beside its own torch build: a second
# venv keeps the main one small (about 5.5 GB, taken from this machine's disk by pip).
IMAGENET_VENV ?= .venv-imagenet
IMAGENET_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
IMAGENET_STAMP = $(IMAGENET_VENV)/.installed

.PHONY: install demo lint format docs test test-imagenet test-quick clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test,cluster,analysis,docs,tensorboard]"
	touch $@

$(IMAGENET_STAMP): pyproject.toml
	$(PYTHON) -m venv $(IMAGENET_VENV)
	$(IMAGENET_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(IMAGENET_VENV)/bin/python -m pip install --quiet $(IMAGENET_TORCH_SPEC)
	$(IMAGENET_VENV)/bin/python -m pip install --quiet -e ".[test,imagenet]"
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/rethink demo --out demo-out

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The documentation site (mkdocs.yml, docs/, the API reference from the docstrings) into site/;
# --strict turns every warning (a broken link, an unrenderable docstring) into a failure.
docs: install
	$(VENV)/bin/mkdocs build --strict

test: lint docs
	$(VENV)/bin/python -m pytest -q
	$(MAKE) test-imagenet

test-imagenet: $(IMAGENET_STAMP)
	$(IMAGENET_VENV)/bin/python -m pytest -q -m imagenet

test-quick: install
	$(VENV)/bin/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(IMAGENET_VENV) demo-out runs results site .pytest_cache
