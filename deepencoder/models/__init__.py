"""The reference encoders in plain PyTorch, term for term with upstream (the correctness oracle).

``sam`` (the SAM-B trunk + compressor both families share), ``clip`` (OCR-1's global stage), ``flow``
(OCR-2's Qwen2 flow encoder), ``ocr1`` / ``ocr2`` (each family's assembly and token layout).
"""

from .clip import CLIPVision  # noqa: F401
from .flow import FlowEncoder, flow_mask, flow_mask_bool, rope_tables  # noqa: F401
from .ocr1 import DeepEncoderReference, layout_tokens  # noqa: F401
from .ocr2 import DeepEncoderV2Reference, layout_tokens_v2  # noqa: F401
from .sam import SAMEncoder, check_pixels  # noqa: F401


def reference_model(config):
    """The reference module of ``config``'s family (``config.family``: ``"ocr1"`` or ``"ocr2"``)."""
    return DeepEncoderV2Reference(config) if config.family == "ocr2" else DeepEncoderReference(config)
