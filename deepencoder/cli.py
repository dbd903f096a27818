"""The ``deepencoder`` command line.

    deepencoder encode PAGE.png [FOLDER ...] --mode base --out out/ [--weights CKPT] [--backend auto]
    deepencoder demo --out demo_out          # sample page, every mode, table
    deepencoder bench ...                    # the benchmark suite (python -m bench)
    deepencoder render / compress ...        # optical context compression (deepencoder.optical)
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

from . import limits
from .modes import DEFAULT_MODE, FAMILY_MODES, get_mode
from .progress import Progress

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


class CLIError(Exception):
    """A user error: printed as one clear line, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C, with what was kept: printed as one line, exit code 130."""


ENCODE_FORMAT = "deepencoder.encode/1"


def collect_inputs(paths: Sequence[str], recursive: bool = False) -> List[str]:
    """Expand files and folders into a list of inputs (sorted within a folder): images, and one input per
    page of a PDF or multi-page TIFF (``doc.pdf:3``, see :mod:`deepencoder.sources`); a file named twice
    (directly, or also through its folder) is encoded once."""
    from . import sources

    out: List[str] = []
    seen = set()
    for p in paths:
        if os.path.isdir(p):
            found = []
            try:
                walker = os.walk(p) if recursive else [(p, [], os.listdir(p))]
                for root, _, files in walker:
                    found += [os.path.join(root, f) for f in files if sources.is_supported(f)
                              and os.path.isfile(os.path.join(root, f))]
            except OSError as e:
                raise CLIError(f"{p}: cannot list folder ({e.strerror or e})") from None
            if not found:
                raise CLIError(f"folder {p} holds no images or PDFs ({', '.join(IMAGE_EXTS)}, .pdf)"
                               + ("" if recursive else "; pass --recursive to look in sub-folders"))
            new = [page for f in sorted(found) for page in _pages_of(f)]
        elif os.path.exists(p) or sources.split_page_spec(p)[1]:
            new = _pages_of(p)
        else:
            raise CLIError(f"input not found: {p}")
        for f in new:
            path, spec = sources.split_page_spec(f)
            key = (os.path.realpath(path), spec)
            if key not in seen:
                seen.add(key)
                out.append(f)
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
    """Output file per input, unique by construction, chosen once for the whole run.

    Each input's path relative to the inputs' common folder is mirrored under ``out_dir``
    (``a/page.png b/page.png`` -> ``out/a/page.safetensors``, ``out/b/page.safetensors``). If two inputs
    would still share a name (``page.png`` and ``page.jpg`` in one folder), every output of the run keeps
    its input's extension (``page.png.safetensors``), which is unique because the inputs are. Nothing
    here depends on what is already in ``out_dir``, so a rerun maps every input to the same file.
    """
    from .sources import split_page_spec

    split = [split_page_spec(p) for p in inputs]  # "doc.pdf:3" -> ("doc.pdf", "3")
    absp = [os.path.abspath(f) for f, _ in split]
    base = os.path.commonpath([os.path.dirname(a) for a in absp])
    rels = [os.path.relpath(a, base) for a in absp]
    pages = [f"-p{int(pg):04d}" if pg else "" for _, pg in split]  # one output per page: doc-p0003

    def names(keep_ext: bool) -> List[str]:
        return [(r if keep_ext else os.path.splitext(r)[0]) + pg + ".safetensors" for r, pg in zip(rels, pages)]

    for keep_ext in (False, True):
        cand = names(keep_ext)
        # casefold: two names that differ only in case are one file on macOS and Windows
        if len({c.casefold() for c in cand}) == len(cand):
            return [os.path.join(out_dir, c) for c in cand]
    seen: dict = {}
    for inp, c in zip(inputs, names(True)):
        if c.casefold() in seen:
            raise CLIError(f"inputs {seen[c.casefold()]} and {inp} differ only in letter case; their outputs "
                           "would be one file on some systems: rename one")
        seen[c.casefold()] = inp
    raise AssertionError("unreachable")


def _one_line(msg: str, limit: int = 600) -> str:
    """Errors print on one line: a multi-line message (e.g. a checkpoint's key lists) is joined."""
    parts = [x.strip() for x in str(msg).splitlines() if x.strip()]
    line = parts[0] if parts else str(msg)
    for prev, x in zip(parts, parts[1:]):  # "title:" + its items read as one clause
        line += (" " if prev.endswith(":") else "; ") + x
    if len(line) > limit:
        line = line[:limit] + " ... (rerun with --debug for the full message)"
    return line


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_image_header(path: str):
    """Open an image's header only (no decode): (width, height); one-line errors for unreadable files
    and for images over :data:`deepencoder.limits.IMAGE_PIXELS`."""
    import warnings

    from PIL import Image

    # Pillow's decompression-bomb check runs in open(); make it ours: a hard error at our limit.
    Image.MAX_IMAGE_PIXELS = limits.IMAGE_PIXELS.value
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise limits.LimitError(f"{path}: the image is over the limit of {limits.IMAGE_PIXELS.value:,} "
                                f"{limits.IMAGE_PIXELS.what} (raise it with the environment variable "
                                f"{limits.IMAGE_PIXELS.env}=N)") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: not a readable image ({e})") from None
    if w < 1 or h < 1:
        raise ValueError(f"{path}: image has size {w}x{h}")
    limits.IMAGE_PIXELS.check(w * h, f"{path} ({w}x{h})")
    return w, h


def format_table(rows: List[dict]) -> str:
    cols = ["input", "model", "mode", "size", "tiles", "vision tokens", "LLM tokens", "time (s)"]
    body = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line, sep] + ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body])


def vision_tokens(mode: str, grid, family: str = "ocr1") -> int:
    """Projected tokens before newlines/separator: g^2 of the global view plus t^2 per tile."""
    from .modes import tile_token_side

    g = get_mode(mode, family).grid[1]
    t = tile_token_side(family)
    cols, rows = grid
    return g * g + (cols * rows * t * t if cols * rows > 1 else 0)


def row_for(res, name: str) -> dict:
    cols, rows = res.grid
    fam = getattr(res, "family", "ocr1")
    return {"input": name, "model": fam, "mode": res.mode, "size": f"{res.size[0]}x{res.size[1]}",
            "tiles": f"{cols}x{rows}" if cols * rows > 1 else "-",
            "vision tokens": vision_tokens(res.mode, res.grid, fam), "LLM tokens": res.num_tokens,
            "time (s)": f"{res.seconds:.2f}"}


# ---------------------------------------------------------------------------------------------- preflight
# Everything a user can get wrong is checked here, before the model build (seconds) and before any file
# is touched: limits, device / backend / dtype, the checkpoint's headers, the output folder.


def preflight_model_args(args) -> Tuple[str, "object"]:
    """Check ``--max-tiles``, ``--device``, ``--dtype``, ``--backend``, ``--cuda-graphs``, ``--weights``;
    return (device, torch dtype). Raises :class:`CLIError` (one line)."""
    import torch

    from .encoder import resolve_dtype

    resolve_model_family(args)
    try:
        if args.max_tiles is not None:
            limits.check_max_tiles(args.max_tiles)
    except limits.LimitError as e:
        raise CLIError(str(e)) from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {device!r}: not a device (cpu, cuda, cuda:1)") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {device!r}: only cpu and cuda are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: CUDA is not available on this machine "
                           "(torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    try:
        dtype = resolve_dtype(args.dtype) or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    except ValueError as e:
        raise CLIError(f"--dtype: {e}") from None
    if getattr(args, "cuda_graphs", False):
        if dev.type != "cuda":
            raise CLIError(f"--cuda-graphs needs a CUDA device, got --device {device}")
        if args.backend == "reference":
            raise CLIError("--cuda-graphs applies to --backend fast (or auto on CUDA), not reference")
    if args.backend == "fast":
        from . import fast

        try:
            fast.check_runnable(dev, dtype)
        except (RuntimeError, ValueError) as e:
            raise CLIError(f"--backend fast: {_one_line(e)}") from None
    if args.weights is not None:
        preflight_weights(args.weights, _config(args))
    return str(dev), dtype


def resolve_model_family(args) -> str:
    """``--model auto|ocr1|ocr2`` (auto: from the checkpoint's keys, else ocr1) -> ``args.family``; a
    checkpoint of the other family is a one-line error before anything is built."""
    if getattr(args, "family", None):
        return args.family
    from .encoder import resolve_family
    from .weights import CheckpointError

    requested = None if getattr(args, "model", "auto") in (None, "auto") else args.model
    try:
        args.family = resolve_family(requested, None, args.weights)
    except FileNotFoundError as e:
        raise CLIError(f"--weights: {_one_line(e)}") from None
    except CheckpointError as e:
        raise CLIError(f"--weights: {_one_line(e)}") from None
    return args.family


def _config(args):
    from .config import family_config

    return family_config(resolve_model_family(args), small=getattr(args, "config", "deepseek-ocr") == "small-test")


def preflight_weights(path: str, cfg) -> None:
    """Check a checkpoint's files, index and headers (keys, shapes, dtypes) against the model built on the
    ``meta`` device (no memory, no init): every :class:`CheckpointError` before the real build."""
    import torch

    from . import encoder
    from .weights import CheckpointError, preflight_checkpoint

    # main's encoder.py builds through models.reference_model (OCR-1 and OCR-2); this branch's has the class
    build = getattr(encoder, "reference_model", None) or encoder.DeepEncoderReference
    with torch.device("meta"):
        model = build(cfg)
    try:
        preflight_checkpoint(path, model)
    except (CheckpointError, OSError) as e:
        msg = _one_line(e)
        raise CLIError(f"--weights: {msg}" if path in msg else f"--weights {path}: {msg}") from None


def preflight_out_dir(out: str, flag: str = "--out") -> None:
    """``out`` must be a folder we can write: created here (empty) if missing, probed with a temp file."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"{flag} {out}: exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".deepencoder-probe-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise CLIError(f"{flag} {out}: cannot write there ({e.strerror or e})") from None


def _make_encoder(args, dtype=None, device=None):
    import warnings

    from .encoder import RANDOM_WEIGHTS_WARNING, DeepEncoder, RandomWeightsWarning

    cfg = _config(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # printed below, once, in the CLI's words
        enc = DeepEncoder(config=cfg, weights=args.weights, device=device or args.device,
                          dtype=dtype or args.dtype, backend=args.backend,
                          cuda_graphs=getattr(args, "cuda_graphs", False))
    if enc.random_weights:
        print("WARNING: " + RANDOM_WEIGHTS_WARNING, file=sys.stderr)
    print(f"deepencoder: model={enc.family} config={cfg.name} backend={enc.backend} device={enc.device} dtype={str(enc.dtype)[6:]} "
          f"weights={'RANDOM (seeded)' if enc.random_weights else args.weights}", file=sys.stderr)
    return enc


def atomic_write(path: str, write) -> None:
    """``write(tmp_path)`` then rename onto ``path``: a reader (or a rerun after Ctrl-C or a crash) sees the
    old file or the whole new one, never a partial one. The temporary is removed on any failure."""
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.partial-", dir=d)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _request_meta(args, dtype) -> dict:
    """What an output must have been made with to count as done (see :func:`existing_mismatch`)."""
    return {"format": ENCODE_FORMAT, "family": args.family, "mode": args.mode, "max_tiles": str(args.max_tiles),
            "config": _config(args).name, "dtype": str(dtype).replace("torch.", ""),
            "weights": "random(seed=0)" if args.weights is None else os.path.abspath(args.weights)}


def existing_mismatch(path: str, expect: dict) -> Optional[str]:
    """None when the output at ``path`` was made from this input with this request (a rerun skips it);
    else why not."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - any unreadable file is simply "not ours"
        return "not a readable deepencoder output"
    for k, v in expect.items():
        if meta.get(k) != v:
            return f"made with {k}={meta.get(k)!r}, this run asks {v!r}"
    return None


def _save(res, path: str, enc, extra_meta: Optional[dict] = None) -> None:
    from safetensors.torch import save_file

    meta = {"family": enc.family, "mode": res.mode, "grid": f"{res.grid[0]}x{res.grid[1]}",
            "num_tokens": str(res.num_tokens),
            "source": res.source, "random_weights": str(enc.random_weights), "config": enc.config.name,
            **(extra_meta or {})}
    tokens = res.tokens.detach().float().cpu().contiguous()
    atomic_write(path, lambda tmp: save_file({"tokens": tokens}, tmp, metadata=meta))


def _remove_stale_partials(path: str) -> None:
    """A run killed hard (SIGKILL, power) can leave a hidden temporary; the rerun removes it."""
    for f in glob.glob(os.path.join(glob.escape(os.path.dirname(path) or "."),
                                    f".{glob.escape(os.path.basename(path))}.partial-*")):
        try:
            os.remove(f)
        except OSError:
            pass


def cmd_encode(args) -> int:
    """Encode every input; see the README (CLI: outputs, reruns, interruption, failures) for the policy."""
    family = resolve_model_family(args)
    if args.mode is None:
        args.mode = DEFAULT_MODE[family]
    try:
        get_mode(args.mode, family)
    except ValueError as e:
        raise CLIError(f"--mode: {e}") from None
    inputs = collect_inputs(args.inputs, args.recursive)
    outs = output_paths(inputs, args.out)
    device, dtype = preflight_model_args(args)
    preflight_out_dir(args.out)
    expect = _request_meta(args, dtype)
    failures: List[Tuple[str, str]] = []
    todo: List[Tuple[str, str, str]] = []  # (input, output, sha256)
    done_before = 0
    mismatched: List[Tuple[str, str]] = []
    from .sources import split_page_spec

    for path, out in zip(inputs, outs):
        try:
            file, page = split_page_spec(path)
            if page is None:  # a PDF page is checked when it is rendered (size capped by the dpi)
                check_image_header(file)
            sha = sha256_file(file) + (f":{page}" if page else "")
        except (ValueError, OSError) as e:
            failures.append((path, _one_line(e)))
            continue
        if os.path.exists(out):
            why = existing_mismatch(out, {**expect, "source_sha256": sha})
            if why is None and not args.force:
                done_before += 1
                continue
            if why is not None and not args.force:
                mismatched.append((out, why))
                continue
        todo.append((path, out, sha))
    if mismatched:
        o, why = mismatched[0]
        raise CLIError(f"{len(mismatched)} output file(s) exist from a different request, e.g. {o} ({why}); "
                       "pass --force to replace them, or choose another --out")
    if len(failures) == 1 and not todo and not done_before:  # the single input is bad: just that line
        raise CLIError(failures[0][1])
    for _, reason in failures:
        print(f"deepencoder: error: {reason}", file=sys.stderr)
    if done_before:
        print(f"deepencoder: {done_before} of {len(inputs)} output(s) already up to date in {args.out} (same input "
              "and request); skipping them (--force redoes them)", file=sys.stderr)
    if not todo:
        if failures:
            raise CLIError(f"{len(failures)} of {len(inputs)} input(s) failed; nothing to encode")
        print(f"nothing to do: all {len(inputs)} output(s) in {args.out} are up to date")
        return 0
    enc = _make_encoder(args, dtype=dtype, device=device)
    from .sources import load_input as load_image  # an image, or one page of a PDF / TIFF ("doc.pdf:3")

    rows = []
    written = 0
    try:
        with Progress(len(todo), "encode", unit="inputs", enabled=len(todo) > 1 or not sys.stderr.isatty(),
                      per_item=True) as bar:
            for path, out, sha in todo:
                try:
                    img = load_image(path)
                    res = enc.encode([img], mode=args.mode, max_tiles=args.max_tiles)[0]
                    res.source = path
                    _remove_stale_partials(out)
                    _save(res, out, enc, {**expect, "source_sha256": sha})
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001 - the policy: report this input, go on with the rest
                    if args.debug:
                        raise
                    msg = _one_line(e)
                    failures.append((path, msg if path in msg else f"{path}: {msg}"))
                    print(f"deepencoder: error: {failures[-1][1]}", file=sys.stderr)
                    bar.update(1, os.path.basename(path) + " FAILED")
                    continue
                written += 1
                rows.append(row_for(res, os.path.relpath(path)))
                bar.update(1, os.path.basename(path))
    except KeyboardInterrupt:
        raise Interrupted(f"{written} of {len(todo)} output(s) written this run"
                          + (f" ({done_before} were up to date before)" if done_before else "")
                          + f"; completed outputs are kept in {args.out}; rerun the same command to continue") \
            from None
    if rows:
        print(format_table(rows))
    print(f"wrote {written} file(s) to {args.out}" + (f", {done_before} already up to date" if done_before else "")
          + ("  [RANDOM WEIGHTS: values meaningless]" if enc.random_weights else ""))
    if failures:
        raise CLIError(f"{len(failures)} of {len(inputs)} input(s) failed: "
                       + "; ".join(f"{os.path.relpath(p)}" for p, _ in failures[:10])
                       + (" ..." if len(failures) > 10 else "") + " (reasons above)")
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


DEMO_MODES = {"ocr1": ["tiny", "small", "base", "large", "gundam"], "ocr2": ["base", "gundam"]}


def _demo_plan(args) -> List[Tuple[str, str]]:
    """(family, mode) pairs the demo runs: both families unless ``--model`` picks one (``--weights`` picks
    its checkpoint's family); ``--modes`` filters by mode name (``ocr2:gundam`` names one family's mode)."""
    if args.weights is not None or getattr(args, "model", "auto") not in (None, "auto"):
        families = [resolve_model_family(args)]
    else:
        families = ["ocr1", "ocr2"]
    if not args.modes:
        return [(f, m) for f in families for m in DEMO_MODES[f]]
    plan = []
    for item in (x.strip() for x in args.modes.split(",")):
        fam, _, m = item.rpartition(":")
        fams = [fam] if fam else families
        if fam and fam not in families:
            raise CLIError(f"--modes {item}: family {fam!r} is not part of this demo ({', '.join(families)})")
        hits = [(f, m) for f in fams if m in FAMILY_MODES[f]]
        if not hits:
            valid = sorted({x for f in fams for x in FAMILY_MODES[f]})
            raise CLIError(f"--modes: unknown mode {m!r}: choose from {', '.join(valid)}")
        plan += hits
    return list(dict.fromkeys(plan))


def cmd_demo(args) -> int:
    plan = _demo_plan(args)
    families = list(dict.fromkeys(f for f, _ in plan))
    page_path = os.path.join(args.out, "sample_page.png")
    outs = [os.path.join(args.out, f"sample_page.{f}-{m}.safetensors") for f, m in plan]
    existing = [p for p in [page_path] + outs if os.path.lexists(p)]
    if existing and not args.force:
        raise CLIError(f"{len(existing)} output file(s) exist in {args.out}, e.g. {existing[0]}; pass --force to "
                       "overwrite them, or choose another --out")
    checked = {}
    for f in families:  # every argument checked for every family before any file is touched
        args.family = f
        checked[f] = preflight_model_args(args)
    preflight_out_dir(args.out)
    atomic_write(page_path, lambda tmp: make_sample_page().save(tmp, format="PNG"))
    print(f"sample page: {page_path} (1240x1754, A4 at 150 dpi)", file=sys.stderr)
    from .preprocess import load_image

    img = load_image(page_path)
    rows = []
    random_weights = False
    try:
        with Progress(len(plan), "demo", unit="modes") as bar:
            for f in families:
                args.family = f
                device, dtype = checked[f]
                enc = _make_encoder(args, dtype=dtype, device=device)
                random_weights |= enc.random_weights
                for (fam, m), out in zip(plan, outs):
                    if fam != f:
                        continue
                    t0 = time.perf_counter()
                    res = enc.encode([img], mode=m, max_tiles=args.max_tiles)[0]
                    res.seconds = time.perf_counter() - t0
                    res.source = page_path
                    _save(res, out, enc)
                    rows.append(row_for(res, "sample_page.png"))
                    bar.update(1, f"{f} {m}")
                del enc
    except KeyboardInterrupt:
        raise Interrupted(f"{len(rows)} of {len(plan)} (model, mode) output(s) written to {args.out}") from None
    print(format_table(rows))
    print(f"outputs in {args.out}/" + ("  [RANDOM WEIGHTS: values meaningless; token counts are real]"
                                        if random_weights else ""))
    return 0


def _add_model_args(p):
    p.add_argument("--weights", default=None, help="DeepSeek-OCR or DeepSeek-OCR 2 checkpoint (safetensors file, "
                   "index json or folder; the model family is detected from its keys); default: seeded random "
                   "weights (outputs meaningless)")
    p.add_argument("--model", default="auto", choices=["auto", "ocr1", "ocr2"],
                   help="model family: ocr1 = DeepSeek-OCR, ocr2 = DeepSeek-OCR 2 (default: from --weights, else "
                        "ocr1; demo: both)")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "fast"])
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--max-tiles", type=int, default=None,
                   help="Gundam tile MAX (default: ocr1 9 as the HF code, vLLM uses 6; ocr2 6)")
    p.add_argument("--cuda-graphs", action="store_true", help="capture the fast path with CUDA graphs")
    p.add_argument("--config", default="deepseek-ocr", choices=["deepseek-ocr", "small-test"],
                   help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", help="show tracebacks")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem and where to look), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="deepencoder", description="Fast, faithful DeepSeek-OCR vision encoder")
    sub = ap.add_subparsers(dest="cmd", required=True)
    pe = sub.add_parser("encode", help="encode images/folders to safetensors token files")
    pe.add_argument("inputs", nargs="+", help="image files and/or folders")
    pe.add_argument("--mode", default=None, choices=sorted(set(FAMILY_MODES["ocr1"]) | set(FAMILY_MODES["ocr2"])),
                    help="default: base (ocr1), gundam (ocr2)")
    pe.add_argument("--out", default="deepencoder_out", help="output folder")
    pe.add_argument("--force", action="store_true",
                    help="redo and replace existing outputs (default: outputs of the same input and request "
                         "are kept and skipped, so a rerun continues an interrupted run; others are refused)")
    pe.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    _add_model_args(pe)
    pe.set_defaults(func=cmd_encode)
    pd = sub.add_parser("demo", help="make a sample page and encode it in every mode of both model families")
    pd.add_argument("--out", default="demo_out")
    pd.add_argument("--modes", default=None, help="comma-separated subset of modes (e.g. tiny,gundam or ocr2:base)")
    pd.add_argument("--force", action="store_true", help="overwrite outputs already in --out")
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
    """Run the CLI; user errors are one line on stderr and exit 2, Ctrl-C exits 130, and a traceback is
    shown only with ``--debug`` (anywhere on the line) or ``DEEPENCODER_DEBUG=1``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to the benchmark suite's own parser
        return _run_bench(argv[1:])
    debug = "--debug" in argv or os.environ.get("DEEPENCODER_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    args.debug = debug
    prog = f"deepencoder {args.cmd}" if args.cmd in ("render", "compress") else "deepencoder"
    from .weights import CheckpointError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Interrupted as e:
        if debug:
            raise
        print(f"{prog}: interrupted: {e}", file=sys.stderr)
        return 130
    except (CLIError, CheckpointError, limits.LimitError) as e:
        if debug:
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError, RuntimeError, FloatingPointError, MemoryError) as e:
        if debug:
            raise
        print(f"{prog}: error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 2 if isinstance(e, (OSError, ValueError, TypeError)) else 1


if __name__ == "__main__":
    sys.exit(main())
