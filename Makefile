# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   - create .venv, install, make a sample page, encode it in every mode, print the table
#   make test   - create .venv, install, run the whole test suite (CPU; Triton kernels under the interpreter)
# CI (.ci/run) also runs `make sanitize`: deepencoder._C rebuilt with ASan + UBSan in a temporary folder and
# driven through every mode of both families (minutes on a busy machine; its own step with its own limit).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is pinned first: the CPU wheel lies on disk; a bare "torch" would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
JOBS   ?= 2

.PHONY: venv install demo test test-fast lint sanitize bench-cpu aot clean

$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*.cpp) $(wildcard csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[test,bench]"
	touch $@

venv install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m deepencoder.cli demo --out demo_out

test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(JOBS) --dist loadgroup tests

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n $(JOBS) -m "not slow" tests

lint: $(VENV)/.installed
	$(PY) -m ruff check deepencoder kernels bench tests

sanitize: $(VENV)/.installed
	bash csrc/sanitize.sh $(PY)

bench-cpu: $(VENV)/.installed
	$(PY) -m bench --smoke

aot: $(VENV)/.installed
	$(PY) -m bench.aot --out bench/results

clean:
	rm -rf $(VENV) build dist *.egg-info demo_out .pytest_cache
