"""deepencoder.kernels: Triton kernels for DeepEncoder, each usable on its own.

Installed as ``deepencoder.kernels`` (never a top-level ``kernels``). One folder per op:
``reference.py`` (pure torch), ``triton.py`` (``@triton.jit`` kernels + launchers), ``op.py`` (custom op,
fake implementation, dispatcher). See ``_common.py`` for the backend rules.

DeepEncoder V2 (OCR-2) ops, imported here so ``import deepencoder.kernels`` registers their custom ops;
call them as ``deepencoder.kernels.<folder>.<op>`` (the folder and the function share a name, and
rebinding the folder's name to the function would break ``import deepencoder.kernels.<folder>.triton``):
``flow_attention.flow_attention``, ``add_rmsnorm.add_rmsnorm``, ``add_rmsnorm.rms_norm``,
``swiglu.swiglu``.
"""

from . import add_rmsnorm, flow_attention, swiglu  # noqa: F401
from ._common import BackendUnavailable, compressor_grids, last_backend, last_backend_reason, token_grid  # noqa: F401
