"""Throughput of the preprocessing engines on a 1240x1754 page (A4 at 150 dpi): Base and Gundam of
DeepSeek-OCR (ocr1), Gundam of DeepSeek-OCR 2 (ocr2: 6 tiles of 768 plus the 1024 view).

pytest-benchmark; with benchmarks disabled (``--benchmark-disable``, or automatically under xdist as in
``make test``) each case runs once as a smoke test. Measure with:

    .venv/bin/python -m pytest tests/test_preprocess_bench.py -p no:xdist --benchmark-only \\
        --benchmark-columns=min,median,rounds

``extra_info['pages_per_s']`` holds pages/s from the median. ``deepencoder.preprocess.benchmark_pages``
gives the same numbers without pytest.
"""

import pytest
import torch
from PIL import Image

from deepencoder import preprocess as P

PAGE = P.sample_page()
PAGE_PIL = Image.fromarray(PAGE)

CASES = [("python", 1)]
if P.cpp_available():
    CASES += [("cpp", 1), ("cpp", 2)]


@pytest.mark.parametrize("family,mode", [("ocr1", "base"), ("ocr1", "gundam"), ("ocr2", "gundam")],
                         ids=["ocr1-base", "ocr1-gundam", "ocr2-gundam"])
@pytest.mark.parametrize("engine,threads", CASES, ids=[f"{e}-{t}thread" for e, t in CASES])
def test_bench_pages(benchmark, engine, threads, family, mode):
    if engine == "python":
        # the upstream path: a PIL page through PIL resize/pad, then ToTensor + Normalize
        pages = 1
        fn = lambda: P.preprocess(PAGE_PIL, mode, engine="python", family=family)  # noqa: E731
    else:
        # one batch call with `threads` pages, outputs into a reused buffer
        pages = threads
        out = torch.empty(P.views_numel(1240, 1754, mode, family=family) * pages)
        fn = lambda: P.preprocess_batch([PAGE] * pages, mode, engine="cpp", threads=threads, out=out,  # noqa: E731
                                        family=family)
    res = benchmark(fn)
    assert len(res if isinstance(res, list) else [res]) == pages
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["pages_per_s"] = pages / stats.stats.median
