"""deepencoder: fast, faithful inference for the vision encoders of DeepSeek-OCR ("DeepEncoder", family
``"ocr1"``) and DeepSeek-OCR 2 ("DeepEncoder V2", family ``"ocr2"``).

    from deepencoder import DeepEncoder
    enc = DeepEncoder(weights="DeepSeek-OCR-2/")         # family detected from the checkpoint's keys
    enc = DeepEncoder(family="ocr2")                      # no weights: seeded random weights (said plainly)
    out = enc.encode(["page.png"])                        # -> [EncodedImage(tokens [T, 1280], ...)]

    deepencoder.patch(model) / deepencoder.unpatch(model)  # drop-in for a loaded model (either family,
                                                           # upstream trees or transformers' DeepseekOcr2)
"""

from .config import (  # noqa: F401
    FAMILIES,
    CLIPConfig,
    DeepEncoderConfig,
    DeepEncoderV2Config,
    FlowConfig,
    SAMConfig,
    family_config,
)
from .encoder import DeepEncoder, EncodedImage  # noqa: F401
from .models import DeepEncoderReference, DeepEncoderV2Reference  # noqa: F401
from .modes import MODES, choose_tile_grid, get_mode, vision_token_count  # noqa: F401
from .weights import CheckpointError, checkpoint_family, load_checkpoint, save_checkpoint  # noqa: F401


def patch(model, cuda_graphs: bool = False, op_backend: str = "auto", backend: str = "auto"):
    """Run a loaded model's vision encoder on this package, in place (see :mod:`deepencoder.patching`)."""
    from .patching import patch as _patch

    return _patch(model, cuda_graphs=cuda_graphs, op_backend=op_backend, backend=backend)


def unpatch(model):
    """Undo :func:`patch`."""
    from .patching import unpatch as _unpatch

    return _unpatch(model)


__version__ = "0.1.0"
