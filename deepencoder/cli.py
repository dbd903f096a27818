"""The ``deepencoder`` command line.

    deepencoder encode PAGE.png [FOLDER ...] --mode base --out out/ [--weights CKPT] [--backend auto]
    deepencoder demo --out demo_out          # sample page, every mode, table
    deepencoder bench ...                    # the benchmark suite (python -m bench)
    deepencoder render / compress ...        # optical context compression (deepencoder.optical)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence

from .modes import DEFAULT_MAX_TILES, MODES, TILE_GRID, get_mode

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


class CLIError(Exception):
    """A user error: printed as one clear line, exit code 2."""


def collect_inputs(paths: Sequence[str], recursive: bool = False) -> List[str]:
    """Expand files and folders into a list of image files (sorted within a folder)."""
    from . import sources

    out: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            walker = os.walk(p) if recursive else [(p, [], os.listdir(p))]
            for root, _, files in walker:
                found += [os.path.join(root, f) for f in files if sources.is_supported(f)]
            if not found:
                raise CLIError(f"folder {p} holds no images or PDFs ({', '.join(IMAGE_EXTS)}, .pdf)")
            for f in sorted(found):
                out += _pages_of(f)
        elif os.path.exists(p) or sources.split_page_spec(p)[1]:
            out += _pages_of(p)
        else:
            raise CLIError(f"input not found: {p}")
    if not out:
        raise CLIError("no inputs given")
    return out


def _pages_of(p: str) -> List[str]:
    """A PDF / multi-page TIFF becomes one input per page (``doc.pdf:3``; see deepencoder.sources)."""
    from . import sources

    try:
        return sources.page_inputs(p)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def output_paths(inputs: Sequence[str], out_dir: str) -> List[str]:
    """One ``<stem>.safetensors`` per input; duplicate stems get ``-1``, ``-2`` suffixes."""
    seen = {}
    paths = []
    for p in inputs:
        stem = os.path.splitext(os.path.basename(p))[0] or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        name = stem if n == 0 else f"{stem}-{n}"
        paths.append(os.path.join(out_dir, name + ".safetensors"))
    return paths


class Progress:
    """A small stderr progress bar (only for more than one input, only on a terminal or when forced)."""

    def __init__(self, total: int, enabled: Optional[bool] = None):
        self.total, self.n, self.t0 = total, 0, time.perf_counter()
        self.enabled = (total > 1 and sys.stderr.isatty()) if enabled is None else enabled

    def step(self, label: str = "") -> None:
        self.n += 1
        if not self.enabled:
            return
        w = 30
        done = int(w * self.n / self.total)
        el = time.perf_counter() - self.t0
        sys.stderr.write(f"\r[{'#' * done}{'.' * (w - done)}] {self.n}/{self.total} {el:6.1f}s {label[:40]:<40}")
        if self.n == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def format_table(rows: List[dict]) -> str:
    cols = ["input", "mode", "size", "tiles", "vision tokens", "LLM tokens", "time (s)"]
    body = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line, sep] + ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body])


def vision_tokens(mode: str, grid) -> int:
    """Projected tokens before newlines/separator: g^2 of the global view plus TILE_GRID^2 per tile."""
    g = get_mode(mode).grid[1]
    cols, rows = grid
    return g * g + (cols * rows * TILE_GRID * TILE_GRID if cols * rows > 1 else 0)


def row_for(res, name: str) -> dict:
    cols, rows = res.grid
    return {"input": name, "mode": res.mode, "size": f"{res.size[0]}x{res.size[1]}",
            "tiles": f"{cols}x{rows}" if cols * rows > 1 else "-",
            "vision tokens": vision_tokens(res.mode, res.grid), "LLM tokens": res.num_tokens,
            "time (s)": f"{res.seconds:.2f}"}


def _make_encoder(args):
    from .config import DeepEncoderConfig
    from .encoder import RANDOM_WEIGHTS_WARNING, DeepEncoder

    cfg = DeepEncoderConfig.small_test() if getattr(args, "config", "deepseek-ocr") == "small-test" \
        else DeepEncoderConfig.deepseek_ocr()
    enc = DeepEncoder(config=cfg, weights=args.weights, device=args.device, dtype=args.dtype,
                      backend=args.backend, cuda_graphs=getattr(args, "cuda_graphs", False))
    if enc.random_weights:
        print("WARNING: " + RANDOM_WEIGHTS_WARNING, file=sys.stderr)
    print(f"deepencoder: config={cfg.name} backend={enc.backend} device={enc.device} dtype={str(enc.dtype)[6:]} "
          f"weights={'RANDOM (seeded)' if enc.random_weights else args.weights}", file=sys.stderr)
    return enc


def _save(res, path: str, enc) -> None:
    from safetensors.torch import save_file

    meta = {"mode": res.mode, "grid": f"{res.grid[0]}x{res.grid[1]}", "num_tokens": str(res.num_tokens),
            "source": res.source, "random_weights": str(enc.random_weights), "config": enc.config.name}
    tmp = path + ".tmp"
    save_file({"tokens": res.tokens.detach().float().cpu().contiguous()}, tmp, metadata=meta)
    os.replace(tmp, path)


def cmd_encode(args) -> int:
    inputs = collect_inputs(args.inputs, args.recursive)
    get_mode(args.mode)
    outs = output_paths(inputs, args.out)
    existing = [p for p in outs if os.path.exists(p)]
    if existing and not args.force:
        raise CLIError(f"{len(existing)} output file(s) exist, e.g. {existing[0]}; pass --force to overwrite")
    os.makedirs(args.out, exist_ok=True)
    enc = _make_encoder(args)
    from .sources import load_input as load_image  # also "doc.pdf:3" pages

    rows = []
    bar = Progress(len(inputs))
    for path, out in zip(inputs, outs):
        try:
            img = load_image(path)
        except (ValueError, OSError, TypeError) as e:
            raise CLIError(f"{path}: {e}") from e
        res = enc.encode([img], mode=args.mode, max_tiles=args.max_tiles)[0]
        res.source = path
        _save(res, out, enc)
        rows.append(row_for(res, os.path.basename(path)))
        bar.step(os.path.basename(path))
    print(format_table(rows))
    print(f"wrote {len(outs)} file(s) to {args.out}" + ("  [RANDOM WEIGHTS: values meaningless]"
                                                         if enc.random_weights else ""))
    return 0


def make_sample_page(width: int = 1240, height: int = 1754):
    """A synthetic A4-at-150-dpi document page: title, paragraphs, a table, deterministic."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=22)
        title = ImageFont.load_default(size=44)
    except TypeError:  # Pillow < 10.1
        font = title = ImageFont.load_default()
    d.text((90, 80), "DeepEncoder sample page", fill=(0, 0, 0), font=title)
    words = ("optical context compression renders text as pixels so that a page of a thousand text "
             "tokens reaches the language model as a few hundred vision tokens").split()
    y = 170
    for para in range(7):
        for line in range(6):
            k = (para * 7 + line * 3) % len(words)
            text = " ".join((words[k:] + words[:k])[:11])
            d.text((90, y), text, fill=(20, 20, 20), font=font)
            y += 30
        y += 24
    for r in range(6):
        for c in range(4):
            x0, y0 = 90 + c * 260, y + r * 44
            d.rectangle([x0, y0, x0 + 260, y0 + 44], outline=(0, 0, 0))
            d.text((x0 + 10, y0 + 10), f"cell {r}.{c} = {r * 4 + c}", fill=(0, 0, 0), font=font)
    return img


def cmd_demo(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    page_path = os.path.join(args.out, "sample_page.png")
    make_sample_page().save(page_path)
    print(f"sample page: {page_path} (1240x1754, A4 at 150 dpi)", file=sys.stderr)
    enc = _make_encoder(args)
    from .preprocess import load_image

    img = load_image(page_path)
    rows = []
    modes = args.modes.split(",") if args.modes else list(MODES)
    bar = Progress(len(modes), enabled=True)
    for m in modes:
        out = os.path.join(args.out, f"sample_page.{m}.safetensors")
        t0 = time.perf_counter()
        res = enc.encode([img], mode=m, max_tiles=args.max_tiles)[0]
        res.seconds = time.perf_counter() - t0
        res.source = page_path
        _save(res, out, enc)
        rows.append(row_for(res, "sample_page.png"))
        bar.step(m)
    print(format_table(rows))
    print(f"outputs in {args.out}/" + ("  [RANDOM WEIGHTS: values meaningless; token counts are real]"
                                        if enc.random_weights else ""))
    return 0


def _add_model_args(p):
    p.add_argument("--weights", default=None, help="DeepSeek-OCR checkpoint (safetensors file, index json or "
                   "folder); default: seeded random weights (outputs meaningless)")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "fast"])
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--max-tiles", type=int, default=DEFAULT_MAX_TILES, help="Gundam tile MAX (HF 9, vLLM 6)")
    p.add_argument("--cuda-graphs", action="store_true", help="capture the fast path with CUDA graphs")
    p.add_argument("--config", default="deepseek-ocr", choices=["deepseek-ocr", "small-test"],
                   help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="deepencoder", description="Fast, faithful DeepSeek-OCR vision encoder")
    sub = ap.add_subparsers(dest="cmd", required=True)
    pe = sub.add_parser("encode", help="encode images/folders to safetensors token files")
    pe.add_argument("inputs", nargs="+", help="image files and/or folders")
    pe.add_argument("--mode", default="base", choices=list(MODES))
    pe.add_argument("--out", default="deepencoder_out", help="output folder")
    pe.add_argument("--force", action="store_true", help="overwrite existing outputs")
    pe.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    _add_model_args(pe)
    pe.set_defaults(func=cmd_encode)
    pd = sub.add_parser("demo", help="make a sample page and encode it in every mode")
    pd.add_argument("--out", default="demo_out")
    pd.add_argument("--modes", default=None, help="comma-separated subset of modes")
    _add_model_args(pd)
    pd.set_defaults(func=cmd_demo)
    pb = sub.add_parser("bench", help="benchmark suite (same as python -m bench)", add_help=False)
    pb.add_argument("rest", nargs=argparse.REMAINDER)
    pb.set_defaults(func=lambda a: _run_bench(a.rest))
    try:
        from .optical.cli import add_subcommands
    except ImportError:
        add_subcommands = None
    if add_subcommands is not None:
        add_subcommands(sub)
    from .corpus.cli import add_parser as add_corpus_parser

    add_corpus_parser(sub)  # encode-corpus: parsing and command live in deepencoder.corpus.cli
    return ap


def _run_bench(rest) -> int:
    try:
        from .bench.__main__ import main as bench_main
    except ImportError:
        from bench.__main__ import main as bench_main  # running from a source checkout
    return bench_main(rest) or 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to the benchmark suite's own parser
        return _run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as e:
        print(f"deepencoder: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
