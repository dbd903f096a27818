"""Token accounting: text tokens of a string vs vision tokens of the pages that hold it.

Vision tokens per page come from :func:`deepencoder.modes.vision_token_count` for the model family asked
for, the same count its encoder emits (ocr1: newline after every token row, one view separator, Gundam adds
its tiles; ocr2: no newlines, 257 for the global view, 144 per 768 crop), so a table here and an
``encoded.safetensors`` written by the encoder always agree.

Text tokens come from a pluggable counter: any callable ``str -> int`` (or ``str -> sequence``, whose
length is taken). Without one, :func:`estimate_text_tokens` gives a clearly labelled estimate.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

from ..modes import check_family, get_mode, vision_token_count

# Image modes of each family in falling resolution (falling vision tokens for a page big enough to tile)
FAMILY_LADDER_MODES = {"ocr1": ("gundam", "large", "base", "small", "tiny"), "ocr2": ("gundam", "base")}
LADDER_MODES = FAMILY_LADDER_MODES["ocr1"]
ESTIMATE_NAME = "ESTIMATE (~4 chars/token, 1 per CJK char; not a real tokenizer)"

# CJK ideographs, kana, hangul, fullwidth forms: a BPE vocabulary spends about one token per character
_WIDE = re.compile(r"[\u1100-\u11ff\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
                   r"\U00020000-\U0003ffff]")


def estimate_text_tokens(text: str) -> int:
    """Rough text-token count: ``ceil(other characters / 4) + one per CJK/kana/hangul character``.

    Four characters per token is the usual rule of thumb for English with GPT-style BPE vocabularies;
    it is an ESTIMATE, labelled as such wherever it is reported. Pass a real tokenizer for real counts.
    """
    if not text:
        return 0
    wide = len(_WIDE.findall(text))
    return math.ceil((len(text) - wide) / 4) + wide


class TokenCounter:
    """A named ``str -> int`` text-token counter."""

    def __init__(self, fn: Optional[Callable] = None, name: Optional[str] = None):
        self.fn = fn or estimate_text_tokens
        self.is_estimate = fn is None or fn is estimate_text_tokens
        self.name = name or (ESTIMATE_NAME if self.is_estimate else getattr(fn, "__name__", type(fn).__name__))

    def __call__(self, text: str) -> int:
        n = self.fn(text)
        if isinstance(n, bool) or not isinstance(n, int):
            try:
                n = len(n)  # a tokenizer that returns ids or pieces
            except TypeError:
                raise ValueError(f"token counter {self.name} returned a {type(n).__name__}; it must return an int "
                                 "or a sequence of tokens") from None
        if n < 0:
            raise ValueError(f"token counter {self.name} returned a negative count ({n})")
        return n


def make_counter(spec: Union[None, str, Callable, TokenCounter] = None) -> TokenCounter:
    """``None``/"estimate": the estimate; a callable; "hf:NAME_OR_PATH" (transformers AutoTokenizer,
    special tokens not counted); "module.path:function" (a ``str -> int`` function)."""
    if isinstance(spec, TokenCounter):
        return spec
    if spec is None or spec == "estimate":
        return TokenCounter()
    if callable(spec):
        return TokenCounter(spec)
    if not isinstance(spec, str):
        raise TypeError(f"tokenizer must be None, a callable or a string spec, got {type(spec).__name__}")
    if spec.startswith("hf:"):
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ImportError("--tokenizer hf:... needs the transformers package (pip install transformers)") from e
        tok = AutoTokenizer.from_pretrained(spec[3:], trust_remote_code=False)
        return TokenCounter(lambda s: len(tok.encode(s, add_special_tokens=False)), name=spec)
    if ":" in spec:
        mod, _, attr = spec.partition(":")
        if not mod or not attr:
            raise ValueError(f"tokenizer {spec!r}: expected 'module.path:function'")
        try:
            module = importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - any import failure is the user's spec, said in one line
            raise ValueError(f"tokenizer {spec!r}: cannot import module {mod!r} ({type(e).__name__}: {e})") from None
        fn = getattr(module, attr, None)
        if fn is None:
            raise ValueError(f"tokenizer {spec!r}: module {mod!r} has no attribute {attr!r}")
        if not callable(fn):
            raise ValueError(f"tokenizer {spec!r}: {mod}.{attr} is a {type(fn).__name__}, not a callable str -> int")
        return TokenCounter(fn, name=spec)
    raise ValueError(f"unknown tokenizer spec {spec!r}: use 'estimate', 'hf:NAME_OR_PATH' or 'module:function'")


def ladder_modes(family: str = "ocr1") -> Tuple[str, ...]:
    """The image modes of ``family``, highest resolution first (ocr1 gundam..tiny, ocr2 gundam, base)."""
    return FAMILY_LADDER_MODES[check_family(family)]


def vision_tokens_per_page(size: Tuple[int, int], mode, max_tiles: Optional[int] = None,
                           family: str = "ocr1") -> int:
    """LLM tokens of one ``size`` page at ``mode`` of ``family`` (max_tiles None: the family's default)."""
    return vision_token_count(size[0], size[1], mode, max_tiles, family=family)


def paper_guide(ratio: float) -> str:
    """Decoding precision the DeepSeek-OCR paper reports at a compression ratio (Fox benchmark, abstract):
    ~97% below 10x, ~60% at 20x. A guide to the regime, not a prediction for this text."""
    if ratio < 10:
        return "<10x: ~97%"
    if ratio < 20:
        return "10-20x: ~60-97%"
    return ">=20x: <=~60%"


@dataclass
class CompressionRow:
    mode: str
    page: str  # "WxH"
    pages: int
    tokens_per_page: int
    vision_tokens: int
    text_tokens: int
    ratio: float  # text tokens per vision token
    chars_per_vision_token: float
    guide: str
    family: str = "ocr1"

    def as_dict(self) -> dict:
        return asdict(self)


def compression_table(text_tokens: int, chars: int, pages: int, size: Tuple[int, int],
                      modes: Optional[Sequence[str]] = None, max_tiles: Optional[int] = None,
                      family: str = "ocr1") -> List[CompressionRow]:
    """The same ``pages`` pages of ``size`` encoded at each mode of ``family`` (``modes`` None: all of
    them, highest resolution first): vision tokens and compression ratio."""
    family = check_family(family)
    rows = []
    for m in (ladder_modes(family) if modes is None else modes):
        m = get_mode(m, family).name
        per = vision_tokens_per_page(size, m, max_tiles, family)
        vt = per * pages
        ratio = text_tokens / vt if vt else 0.0
        rows.append(CompressionRow(m, f"{size[0]}x{size[1]}", pages, per, vt, text_tokens, round(ratio, 2),
                                   round(chars / vt, 1) if vt else 0.0, paper_guide(ratio), family))
    return rows


def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown pipe table, columns padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    num = [all(_isnum(r[i]) for r in rows) if rows else False for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, widths, num)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, num)) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.2f}" if abs(c) < 100 else f"{c:.1f}"
    return str(c)


def _isnum(c) -> bool:
    return isinstance(c, (int, float)) and not isinstance(c, bool)


def format_compression_table(rows: Sequence[CompressionRow], mark: Optional[str] = None) -> str:
    return format_table(
        ["mode", "model", "page", "pages", "vision tok/page", "vision tokens", "text tokens", "text/vision",
         "chars/vision tok", "paper precision guide"],
        [[r.mode + (" *" if r.mode == mark else ""), r.family, r.page, r.pages, r.tokens_per_page, r.vision_tokens,
          r.text_tokens, r.ratio, r.chars_per_vision_token, r.guide] for r in rows])
