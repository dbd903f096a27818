"""``deepencoder render`` and ``deepencoder compress`` (also ``python -m deepencoder.optical ...``).

Wiring into another argparse CLI::

    from deepencoder.optical.cli import add_subcommands
    add_subcommands(subparsers)          # registers "render" and "compress"
    args = parser.parse_args()
    sys.exit(args.func(args))            # each verb sets func: args -> exit status
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import warnings
from typing import List, Optional

from ..modes import DEFAULT_MODE, FAMILY_MODES, get_mode
from .planner import DEFAULT_PAGE_MODES
from .render import DEFAULT_DENSITY, DEFAULT_MAX_PAGES, parse_page_size
from .tokens import make_counter

_FAMILY_NAMES = {"ocr1": "DeepSeek-OCR", "ocr2": "DeepSeek-OCR 2"}

CONVERSATION_HELP = """\
conversation file: JSON list of turns, {"turns": [...]}, or JSONL (one turn per line), oldest first:
  {"role": "user", "text": "...", "age": 12}            age in --age-unit (turns or seconds), or
  {"role": "user", "text": "...", "timestamp": "2025-10-21T09:30:00Z"}   ISO 8601; ages count back
                                                          from the newest timestamp (or --now)
  with neither field the position is the age (last turn = 0). "content" is accepted for "text"."""


def _positive_int(flag: str, zero: bool = False):
    """argparse type for ``flag``; argparse itself prefixes the message with the flag's name."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes an integer, got {s!r}") from None
        if v < (0 if zero else 1):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if zero else '>= 1'}, got {v}")
        return v

    return parse


def _positive_float(flag: str):
    """argparse type: a positive finite float (``nan``, ``inf``, ``0`` are refused)."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a number, got {s!r}") from None
        if not math.isfinite(v) or v <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive finite number, got {s!r}")
        return v

    return parse


def _page_size(s: str):
    try:
        return parse_page_size(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _encoder_args(p: argparse.ArgumentParser, default_on: bool) -> None:
    g = p.add_argument_group("encoder")
    if default_on:
        g.add_argument("--no-encode", dest="encode", action="store_false",
                       help="render and plan only; do not run the encoder")
    else:
        g.add_argument("--encode", action="store_true", help="also run the encoder on the pages")
    g.add_argument("--weights", default=None,
                   help="DeepSeek-OCR or DeepSeek-OCR 2 safetensors checkpoint (file, index json or folder; the "
                        "model family is detected from its keys); without it the encoder uses seeded random "
                        "weights and its outputs are meaningless")
    g.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    g.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--backend", default="auto", choices=("auto", "reference", "fast"))
    g.add_argument("--batch-size", type=_positive_int("--batch-size"), default=8,
                   help="pages per encoder call (default 8)")
    g.add_argument("--config", default="deepseek-ocr", choices=("deepseek-ocr", "small-test"), help=argparse.SUPPRESS)


def _page_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pages")
    g.add_argument("--density", type=_positive_float("--density"), default=DEFAULT_DENSITY,
                   help=f"target characters per vision token of the page mode; picks the font size "
                        f"(default {DEFAULT_DENSITY:g}, about 10x compression at ~4 characters per text token)")
    g.add_argument("--font-size", type=_positive_int("--font-size"), default=None, help="font size in pixels (overrides --density)")
    g.add_argument("--page-size", type=_page_size, default=None, help="WxH in pixels (default: the mode's)")
    g.add_argument("--plain", action="store_true", help="plain text: keep every line break and space as is "
                                                        "(default: simple Markdown)")
    g.add_argument("--max-tiles", type=int, default=None,
                   help="Gundam tile limit (default: ocr1 9 as the HF code, vLLM uses 6; ocr2 6)")
    g.add_argument("--max-pages", type=_positive_int("--max-pages", zero=True), default=DEFAULT_MAX_PAGES,
                   help=f"refuse inputs that need more pages (default {DEFAULT_MAX_PAGES}; 0 = no limit)")
    g.add_argument("--tokenizer", default=None,
                   help="text-token counter: 'estimate' (default, labelled), 'hf:NAME_OR_PATH' (transformers), "
                        "or 'module:function' (str -> int)")


_ALL_MODES = sorted(set(FAMILY_MODES["ocr1"]) | set(FAMILY_MODES["ocr2"]))


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="auto", choices=("auto", "ocr1", "ocr2"),
                   help="model family whose modes and token counts are used: ocr1 = DeepSeek-OCR (tiny..large, "
                        "gundam), ocr2 = DeepSeek-OCR 2 (gundam, base); default: from --weights, else ocr1")


def add_subcommands(subparsers) -> None:
    """Register ``render`` and ``compress`` on an argparse subparsers object."""
    r = subparsers.add_parser(
        "render", help="render text / Markdown into page images for a mode; print the compression table",
        description="Render plain text or simple Markdown into page images sized for a DeepEncoder mode, "
                    "with a font size chosen for a target text density, and print the text-vs-vision token "
                    "table for every mode.")
    r.add_argument("input", help="text or Markdown file ('-' = stdin)")
    r.add_argument("-o", "--out", required=True, help="output folder")
    r.add_argument("--mode", default=None, choices=_ALL_MODES,
                   help="page size and density target (default: base for ocr1, gundam for ocr2)")
    _model_arg(r)
    r.add_argument("--force", action="store_true", help="replace outputs already in --out")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _page_args(r)
    _encoder_args(r, default_on=False)
    r.set_defaults(func=cmd_render)

    c = subparsers.add_parser(
        "compress", help="memory decay: plan a conversation into text + falling-resolution pages under a budget",
        description="Optical context compression of a conversation: newer turns stay text, older turns are "
                    "rendered into pages encoded at falling resolution (ocr1: gundam > large > base > small > tiny; "
                    "ocr2: gundam > base); "
                    "with --budget the oldest turns are degraded first until the total fits.",
        epilog=CONVERSATION_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("conversation", help="JSON / JSONL conversation ('-' = stdin)")
    c.add_argument("-o", "--out", required=True, help="output folder")
    c.add_argument("--budget", type=_positive_int("--budget", zero=True), default=None, help="total token budget (text + vision tokens)")
    c.add_argument("--schedule", default=None,
                   help="level by age, e.g. 'text:4,gundam:8,large:16,base:32,small:64,tiny' (turns) or "
                        "'text:1h,large:1d,tiny' (seconds: s/m/h/d/w); default: doubling bounds as shown "
                        "(ocr2: 'text:4,gundam:16,base' or 'text:1h,gundam:1d,base')")
    c.add_argument("--age-unit", default="turns", choices=("turns", "seconds"), help="unit of 'age' fields")
    c.add_argument("--now", default=None, help="ISO 8601 reference time for timestamps (default: newest turn)")
    c.add_argument("--page-mode", default=None, choices=_ALL_MODES,
                   help="page geometry and density reference (default: ocr1 large 1280x1280, ocr2 gundam "
                        "1536x1536)")
    _model_arg(c)
    c.add_argument("--drop-oldest", action="store_true",
                   help="if the floor (ocr1 tiny, ocr2 base) is still over budget, drop the oldest turns (listed) "
                        "instead of failing")
    c.add_argument("--turns", action="store_true", help="also print the per-turn table")
    c.add_argument("--force", action="store_true", help="replace outputs already in --out")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _page_args(c)
    _encoder_args(c, default_on=True)
    c.set_defaults(func=cmd_compress)


def _preflight(args) -> None:
    """Every check that needs no work done: limits, tokenizer, input file, output folder, and (when the
    encoder will run) device / dtype / backend / checkpoint headers. Raises ValueError / OSError."""
    from .. import limits
    from ..cli import CLIError, preflight_model_args, resolve_model_family

    try:
        family = resolve_model_family(args)
    except CLIError as e:
        raise ValueError(str(e)) from None
    flag = "--mode" if hasattr(args, "mode") else "--page-mode"
    name = "mode" if hasattr(args, "mode") else "page_mode"
    if getattr(args, name) is None:
        setattr(args, name, DEFAULT_MODE[family] if name == "mode" else DEFAULT_PAGE_MODES[family])
    try:
        get_mode(getattr(args, name), family)
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None
    if args.max_tiles is not None:
        limits.check_max_tiles(args.max_tiles)
    limits.BATCH.check(args.batch_size, f"--batch-size {args.batch_size}")
    make_counter(args.tokenizer)  # a bad --tokenizer fails here, not after the pages are drawn
    src = getattr(args, "input", None) or args.conversation
    if src != "-":
        if not os.path.exists(src):
            raise FileNotFoundError(f"no such file: {src}")
        if os.path.isdir(src):
            raise ValueError(f"{src}: is a folder, expected a text file")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise FileExistsError(f"-o {args.out}: exists and is not a folder")
    if args.encode:
        try:
            args.resolved = preflight_model_args(args)
        except CLIError as e:
            raise ValueError(str(e)) from None


def _request_key(args, data: str) -> str:
    """Identifies a run: the input's bytes and every argument that changes the outputs (not --force,
    -q, --device or --backend), so a rerun of the same command continues an interrupted one."""
    skip = {"func", "force", "quiet", "debug", "device", "backend", "turns", "input", "conversation", "out",
            "resolved", "cmd", "command"}
    req = {k: v for k, v in sorted(vars(args).items()) if k not in skip}
    req["weights"] = os.path.abspath(args.weights) if args.weights else None
    req["family"] = args.family  # resolved (auto -> the checkpoint's family): another family is another request
    req["dtype"] = str(getattr(args, "resolved", (None, args.dtype))[1])
    req["input_sha256"] = hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()
    return hashlib.sha256(json.dumps(req, sort_keys=True, default=str).encode()).hexdigest()


def _make_encoder(args):
    if not args.encode:
        return None
    from ..config import family_config
    from ..encoder import DeepEncoder, RandomWeightsWarning

    cfg = family_config(args.family, small=True) if args.config == "small-test" else None
    device, dtype = getattr(args, "resolved", (args.device, args.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # we print our own, plainer notice
        return DeepEncoder(config=cfg, weights=args.weights, device=device, dtype=dtype,
                           backend=args.backend, seed=0, family=args.family)


def _read(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _run(fn, args, verb: str) -> int:
    from ..cli import _one_line
    from ..limits import LimitError
    debug = getattr(args, "debug", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            encoder, out = fn(args)
        except KeyboardInterrupt:
            if debug:
                raise
            _print_warnings(caught)
            print(f"deepencoder {verb}: interrupted: the pages written so far are kept in {args.out}; rerun the "
                  "same command to continue (encoded batches are reused)", file=sys.stderr)
            return 130
        except (ValueError, LimitError, FileExistsError, FileNotFoundError, ImportError, OSError) as e:
            if debug:
                raise
            _print_warnings(caught)
            print(f"deepencoder {verb}: error: {_one_line(e)}", file=sys.stderr)
            return 2
    _print_warnings(caught)
    print(out)
    return 0


def _print_warnings(caught) -> None:
    seen = set()
    for w in caught:
        msg = str(w.message)
        if msg not in seen and "random weights" not in msg.lower():
            seen.add(msg)
            print(f"warning: {msg}", file=sys.stderr)


def _max_pages(args) -> Optional[int]:
    return args.max_pages or None


def cmd_render(args) -> int:
    def go(args):
        from .pipeline import RANDOM_WEIGHTS_NOTICE, render_to_dir

        _preflight(args)
        text = _read(args.input)
        built = []

        def factory():
            enc = _make_encoder(args)
            if enc.random_weights:
                print(RANDOM_WEIGHTS_NOTICE, file=sys.stderr)
            built.append(enc)
            return enc

        s = render_to_dir(text, args.out, args.mode, args.density, args.font_size, args.page_size, not args.plain,
                          args.tokenizer, factory if args.encode else None, _max_pages(args), args.max_tiles,
                          args.batch_size, args.force, not args.quiet, source=args.input,
                          request_key=_request_key(args, text), family=args.family)
        encoder = built[0] if built else None
        g = s["page"]
        est = " (ESTIMATED: no --tokenizer)" if s["text_tokens_are_estimates"] else ""
        lines = [f"{s['chars']} characters -> {len(s['pages'])} page(s) of {g['width']}x{g['height']}, font "
                 f"{g['font_size']} px ({g['cols']}x{g['rows']} cells), rendered for {args.mode} "
                 f"(model {args.family}: {_FAMILY_NAMES[args.family]})",
                 f"text tokens: {s['text_tokens']}{est}; the same pages encoded at each mode (* = --mode):", "",
                 s["table_text"], "", f"wrote {len(s['pages'])} PNG(s), layout.json, summary.json"
                 + (", encoded.safetensors" if encoder is not None else "") + f" to {args.out}"]
        return encoder, "\n".join(lines)

    return _run(go, args, "render")


def cmd_compress(args) -> int:
    def go(args):
        from .pipeline import RANDOM_WEIGHTS_NOTICE, compress_to_dir, turn_table
        from .planner import load_conversation, plan_memory

        _preflight(args)
        data = _read(args.conversation)
        turns = load_conversation(args.conversation, data=data)
        plan = plan_memory(turns, args.budget, args.schedule, args.tokenizer, args.age_unit, args.now,
                           args.page_mode, args.density, args.font_size, args.page_size, not args.plain,
                           args.max_tiles, "drop" if args.drop_oldest else "error", family=args.family)
        has_pages = any(b.level != "text" for b in plan.blocks())
        built = []

        def factory():  # built only after the plan and the output folder are known good
            enc = _make_encoder(args)
            if enc.random_weights:
                print(RANDOM_WEIGHTS_NOTICE, file=sys.stderr)
            built.append(enc)
            return enc

        s = compress_to_dir(plan, args.out, factory if args.encode and has_pages else None, args.batch_size,
                            args.force, not args.quiet, _max_pages(args), request_key=_request_key(args, data))
        encoder = built[0] if built else None
        g = plan.geometry
        lines = [f"{len(plan.turns)} turns; model {plan.family} ({_FAMILY_NAMES[plan.family]}), ladder "
                 f"{' > '.join(plan.ladder)}; pages {g.width}x{g.height}, font {g.font_size} px; schedule "
                 f"{plan.schedule.describe()}; text tokens: {plan.counter_name}", "", s["tables"]["budget"], "",
                 s["tables"]["levels"]]
        if args.turns:
            lines += ["", turn_table(plan)]
        lines += [f"- {n}" for n in plan.notes]
        lines += ["", f"wrote {len(s['pages'])} page PNG(s), summary.json"
                  + (", encoded.safetensors" if encoder is not None and s["pages"] else "") + f" to {args.out}"]
        return encoder, "\n".join(lines)

    return _run(go, args, "compress")


def main(argv: Optional[List[str]] = None) -> int:
    from ..cli import OneLineParser

    parser = OneLineParser(prog="python -m deepencoder.optical",
                                     description="Optical context compression on DeepEncoder.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    debug = "--debug" in (argv or sys.argv[1:])
    args = parser.parse_args([a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"])
    args.debug = debug
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
