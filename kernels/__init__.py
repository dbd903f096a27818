"""deepencoder.kernels: Triton kernels for DeepEncoder, each usable on its own.

Installed as ``deepencoder.kernels`` (never a top-level ``kernels``). One folder per op:
``reference.py`` (pure torch), ``triton.py`` (``@triton.jit`` kernels + launchers), ``op.py`` (custom op,
fake implementation, dispatcher). See ``_common.py`` for the backend rules.
"""

from ._common import BackendUnavailable, compressor_grids, last_backend, last_backend_reason, token_grid  # noqa: F401
