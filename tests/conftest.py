"""Shared fixtures and markers.

With no CUDA device, Triton kernels run under the interpreter: ``TRITON_INTERPRET=1`` must be set before
any module holding ``@triton.jit`` kernels is imported, so it is set here, at collection time.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _bind_kernels_now() -> None:
    """Import every op's ``triton.py`` now, while TRITON_INTERPRET is set: a ``@triton.jit`` function binds to
    the interpreter (or not) when its module is first imported. Without this, the first import could happen
    inside a test that sets TRITON_INTERPRET=0 on purpose (checking the fast path's error off-GPU), and
    every later interpreter test in that process would fail with "Cannot call @triton.jit'd outside of the
    scope of a kernel"."""
    import importlib
    import pkgutil

    try:
        import deepencoder.kernels as K
    except ImportError:
        return
    for m in pkgutil.iter_modules(K.__path__):
        if m.ispkg:
            try:
                importlib.import_module(f"deepencoder.kernels.{m.name}.triton")
            except ImportError:  # no Triton here: the ops' own guards say so in the tests that need it
                pass


_bind_kernels_now()

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (runs in bench/gpu_suite.sh on the GPU machine)")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def bench_smoke_run(tmp_path_factory):
    """``python -m bench --smoke`` once per session: (out folder, rows). Shared by tests/test_bench.py and
    tests/test_bench_ocr2.py (both in xdist group "bench", so one worker runs it once)."""
    from bench import report
    from bench.__main__ import main

    out = tmp_path_factory.mktemp("smoke")
    threads = torch.get_num_threads()
    try:
        rc = main(["--smoke", "--out", str(out), "--name", "smoke", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return out, report.load_rows(str(out / "smoke.json"))


@pytest.fixture
def device():
    return DEVICE


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill a buffer with NaN so an unwritten output tile fails loudly."""
    if t.is_floating_point():
        t.fill_(float("nan"))
    return t


@pytest.fixture
def nan_empty():
    """``nan_empty(shape, dtype, device)``: a torch.empty buffer filled with NaN."""

    def make(shape, dtype=torch.float32, device=DEVICE):
        return poison(torch.empty(shape, dtype=dtype, device=device))

    return make


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def assert_same_dtype_rule(out, ref_lowp, ref_fp32, factor=2.0, atol=1e-5, what="output"):
    """STYLE.md rule: err(kernel vs fp32 ref) <= factor * err(torch same dtype vs fp32 ref) + atol."""
    assert torch.isfinite(out.float()).all(), f"{what}: non-finite values (unwritten tile?)"
    e_k = max_err(out, ref_fp32)
    e_t = max_err(ref_lowp, ref_fp32)
    assert e_k <= factor * e_t + atol, f"{what}: kernel err {e_k:.3e} > {factor} x torch err {e_t:.3e} + {atol}"
