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

# AOT report under another Triton (the GPU machine runs 3.6 with PyTorch 2.11; CI has a newer one)
AOT_TRITON ?= 3.6.0
AOT_VENV   ?= /tmp/deepencoder-aot-triton$(AOT_TRITON)

.PHONY: venv install demo test test-fast lint sanitize bench-cpu aot aot-compat docs clean

$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*.cpp) $(wildcard csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77"
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

# The same compile report under Triton $(AOT_TRITON), CPU only (no CUDA, no GPU): a scratch venv with the CPU
# torch wheel and that Triton alone (the CPU wheel does not pin a Triton, so the two do not conflict), the
# project installed editable without its C++ extension, then bench/results/aot_report-triton<X.Y>.json/.md.
# Every kernel must compile there too: a Triton API difference then shows here, not on the first GPU run.
aot-compat:
	test -x $(AOT_VENV)/bin/python || $(PYTHON) -m venv $(AOT_VENV)
	$(AOT_VENV)/bin/python -m pip install -q --upgrade pip "setuptools>=77"
	$(AOT_VENV)/bin/python -m pip install -q "$(TORCH_PIN)" numpy pillow safetensors
	$(AOT_VENV)/bin/python -m pip install -q "triton==$(AOT_TRITON)"
	DEEPENCODER_NO_EXT=1 $(AOT_VENV)/bin/python -m pip install -q --no-deps -e .
	$(AOT_VENV)/bin/python -c "import triton; assert triton.__version__ == '$(AOT_TRITON)', triton.__version__"
	DEEPENCODER_AOT_STRICT=1 $(AOT_VENV)/bin/python -m bench.aot --out bench/results --versioned

docs: $(VENV)/.installed
	$(PY) -m bench.docs

clean:
	rm -rf $(VENV) build dist *.egg-info demo_out .pytest_cache
