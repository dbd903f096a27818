"""CPU benchmarks (pytest-benchmark) of the reference encoder forward, with a committed baseline.

* ``test_reference_forward_small_tiny``: small test config at Tiny (S=512), batch 1.
* ``test_reference_forward_real_512``: the real DeepSeek-OCR encoder config at S=512, batch 1 (one round:
  ~5-20 s on two cores; marked ``slow``; the weight initialisation is outside the timing).

Both run with one torch thread: on a shared two-core box, OpenMP barriers otherwise stall for a scheduler
tick per op and the numbers measure the neighbours. ``extra_info`` holds images/s and GFLOP/s (from
``bench.flops``). Under xdist pytest-benchmark disables itself and each test just runs its forward once.

Compare against the committed baseline (no make needed)::

    .venv/bin/python -m pytest tests/test_perf_cpu.py -p no:xdist --benchmark-only \\
        --benchmark-storage=bench/results/cpu_baseline --benchmark-compare \\
        --benchmark-compare-fail=median:50% --benchmark-columns=min,median,max,rounds

(``--benchmark-compare`` picks the latest saved run for this machine's folder, ``Linux-CPython-3.11-64bit``;
name one with ``--benchmark-compare=0001``.) Save a new baseline with ``--benchmark-save=baseline`` instead
of the compare flags. CPU timings say how the reference behaves on this machine, not how a GPU runs it.
"""

import pytest
import torch

from bench import flops as fl
from deepencoder import DeepEncoder, DeepEncoderConfig


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pixels(S, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, S, S, generator=g) * 2 - 1  # never zeros


def _record(benchmark, cfg, S):
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        med = stats.stats.median
        benchmark.extra_info["images_per_s"] = 1.0 / med
        benchmark.extra_info["gflops_per_s"] = fl.image_flops(S, cfg) / med / 1e9
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.extra_info["config"] = cfg.name


def test_reference_forward_small_tiny(benchmark, one_thread):
    cfg = DeepEncoderConfig.small_test()
    enc = DeepEncoder(cfg, device="cpu", dtype=torch.float32, backend="reference")
    x = [_pixels(512, s) for s in range(3)]
    state = {"i": 0}

    def run():
        state["i"] += 1
        return enc.encode_pixels(x[state["i"] % 3])  # rotate inputs

    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
    assert out.shape == (1, 64, cfg.n_embed) and torch.isfinite(out).all()
    _record(benchmark, cfg, 512)


@pytest.mark.slow
def test_reference_forward_real_512(benchmark, one_thread):
    cfg = DeepEncoderConfig.deepseek_ocr()
    enc = DeepEncoder(cfg, device="cpu", dtype=torch.float32, backend="reference")
    x = _pixels(512)
    out = benchmark.pedantic(enc.encode_pixels, args=(x,), rounds=1, warmup_rounds=0, iterations=1)
    assert out.shape == (1, 64, 1280) and torch.isfinite(out).all()
    _record(benchmark, cfg, 512)
