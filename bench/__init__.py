"""deepencoder's benchmark suite (``python -m bench`` from the repo root; ``deepencoder bench`` installed).

Modules:

* :mod:`bench.flops`   the cost model ("Cost of one image", see its module doc): MACs/FLOPs/min bytes per op and image
* :mod:`bench.cases`   per-op cases and providers (upstream, reference, reference-compile, fast,
                       fast-graphs, flash-nobias); :mod:`bench.e2e` the end-to-end cases
* :mod:`bench.suite`   the runner: correctness gate first, then timing, derived metrics
* :mod:`bench.measure` provenance, timers, this machine's measured ceilings, memory, errors
* :mod:`bench.report`  JSON, markdown, plots, ``--compare``; :mod:`bench.schema` row validation
* :mod:`bench.aot`     ``python -m bench.aot``: ahead-of-time compile report (registers, spills, MMA)
* :mod:`bench.readme`  ``python -m bench.readme``: README performance section from ``bench/results``
* ``gpu_suite.sh``     the one-call GPU run (install, CUDA tests, matrix, summary)

Nothing heavy is imported here: ``python -m bench`` must be able to set ``TRITON_INTERPRET`` before any
kernel module loads.
"""
