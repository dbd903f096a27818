"""The fast encoders: the same weights as the reference modules, run on the kernels.

``trunk`` (the SAM trunk + compressor both families share), ``ocr1`` (CLIP-L on FlashAttention),
``ocr2`` (the Qwen2 flow encoder on the flow-attention, RMSNorm and SwiGLU kernels).
"""

from .ocr1 import FastDeepEncoder, clip_backend  # noqa: F401
from .ocr2 import FastDeepEncoderV2  # noqa: F401
from .trunk import FastTrunk, check_runnable  # noqa: F401


def fast_model(model, cuda_graphs: bool = False, op_backend: str = "auto"):
    """The fast encoder over ``model``'s weights: OCR-2 when it has ``qwen2_model``, else OCR-1."""
    cls = FastDeepEncoderV2 if hasattr(model, "qwen2_model") else FastDeepEncoder
    return cls(model, cuda_graphs=cuda_graphs, op_backend=op_backend)
