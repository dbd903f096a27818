"""deepencoder: fast, faithful inference for DeepSeek-OCR's vision encoder (DeepEncoder).

    from deepencoder import DeepEncoder
    enc = DeepEncoder(weights="DeepSeek-OCR/")           # None: seeded random weights (said plainly)
    out = enc.encode(["page.png"], mode="gundam")         # -> [EncodedImage(tokens [T, 1280], ...)]

    deepencoder.patch(model) / deepencoder.unpatch(model)  # drop-in for a loaded DeepSeek-OCR model
"""

from .config import CLIPConfig, DeepEncoderConfig, SAMConfig  # noqa: F401
from .encoder import DeepEncoder, EncodedImage  # noqa: F401
from .modes import MODES, choose_tile_grid, get_mode, vision_token_count  # noqa: F401
from .reference import DeepEncoderReference  # noqa: F401
from .weights import CheckpointError, load_checkpoint, save_checkpoint  # noqa: F401


def patch(model, cuda_graphs: bool = False, op_backend: str = "auto"):
    """Swap a loaded DeepSeek-OCR model's encoder for the fast path in place (see deepencoder.patching)."""
    from .patching import patch as _patch

    return _patch(model, cuda_graphs=cuda_graphs, op_backend=op_backend)


def unpatch(model):
    """Undo :func:`patch`."""
    from .patching import unpatch as _unpatch

    return _unpatch(model)


__version__ = "0.1.0"
