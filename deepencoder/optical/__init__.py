"""Optical context compression on DeepEncoder: render text into pages, decay old context, count tokens.

DeepSeek-OCR proposes keeping recent context as text and rendering older context into progressively
smaller images (Gundam > Large > Base > Small > Tiny), so a long conversation fades instead of being cut.
Every API takes the model family (``family="ocr1"`` DeepSeek-OCR, the default, or ``"ocr2"`` DeepSeek-OCR 2,
whose ladder is Gundam > Base): page sizes, token counts, budgets and the ladder are that family's.

* :mod:`.render`: text / simple Markdown -> page images sized for a mode, with a layout record for every
  source character (:func:`layout_text`, :func:`render_text`, :func:`choose_geometry`);
* :mod:`.tokens`: text tokens (pluggable counter, labelled default estimate) vs vision tokens per page
  (:func:`deepencoder.modes.vision_token_count`), compression-ratio tables;
* :mod:`.planner`: age schedule + budget fitter (:func:`plan_memory`), oldest turns degraded first;
* :mod:`.pipeline`: pages to PNG, through :class:`deepencoder.encoder.DeepEncoder` in batches, to
  ``encoded.safetensors`` and ``summary.json``;
* :mod:`.cli`: the ``render`` and ``compress`` verbs.
"""

from .font import FONT_NAME, FontInfo, font_info  # noqa: F401
from .planner import (  # noqa: F401
    DEFAULT_PAGE_MODES,
    FAMILY_LADDERS,
    FAMILY_SCHEDULES,
    LADDER,
    BudgetError,
    ConversationError,
    Plan,
    Schedule,
    Turn,
    load_conversation,
    plan_memory,
    resolve_ages,
)
from .render import (  # noqa: F401
    DEFAULT_DENSITY,
    FAMILY_PAGE_SIZES,
    PAGE_SIZES,
    EmptyInputError,
    Layout,
    PageGeometry,
    Record,
    RightToLeftWarning,
    TooManyPagesError,
    UnsupportedCharacterWarning,
    choose_geometry,
    layout_text,
    render_text,
)
from .tokens import (  # noqa: F401
    FAMILY_LADDER_MODES,
    TokenCounter,
    compression_table,
    estimate_text_tokens,
    format_compression_table,
    make_counter,
)


def compress_to_dir(*a, **kw):
    from .pipeline import compress_to_dir as f

    return f(*a, **kw)


def render_to_dir(*a, **kw):
    from .pipeline import render_to_dir as f

    return f(*a, **kw)
