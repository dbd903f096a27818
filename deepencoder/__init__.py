"""deepencoder: fast, faithful inference for DeepSeek-OCR's vision encoder (DeepEncoder)."""

from .config import CLIPConfig, DeepEncoderConfig, SAMConfig  # noqa: F401
from .modes import MODES, choose_tile_grid, get_mode, vision_token_count  # noqa: F401
from .reference import DeepEncoderReference  # noqa: F401
from .weights import CheckpointError, load_checkpoint, save_checkpoint  # noqa: F401

__version__ = "0.1.0"
