"""Image preprocessing for DeepSeek-OCR's and DeepSeek-OCR 2's vision encoders: images → normalised views.

Upstream (``process/image_process.py`` of DeepSeek-OCR and of DeepSeek-OCR 2; the Hugging Face remote
code is the same):

* load with PIL, ``ImageOps.exif_transpose``, ``.convert("RGB")``;
* ocr1 Tiny (512) / Small (640): ``image.resize((S, S))``, PIL's default BICUBIC with antialiasing;
* pad to square, ocr1 Base (1024) / Large (1280) and every global view of Gundam and of ocr2:
  ``ImageOps.pad(image, (S, S), color=(127, 127, 127))``: aspect-preserving BICUBIC resize so the long
  side is S (the short side ``round(short / long * S)``), pasted at ``round(0.5 * (S - short))`` on fill
  127. Both families call exactly this (OCR-2's ``tokenize_with_images`` as OCR-1's), so it is one
  function here (:func:`pad_square`) and one in the C++ engine;
* Gundam tiles, when the image is larger than the tile T on some side (T = 640 for ocr1, 768 for ocr2):
  ``(cols, rows) = modes.choose_tile_grid(w, h, max_tiles, family=...)``, ``image.resize((T cols,
  T rows))`` (aspect not kept) cut into T×T tiles, row-major;
* ToTensor + Normalize(0.5, 0.5): ``(x / 255 - 0.5) / 0.5`` in float32, CHW, values in [-1, 1] (the pad
  value 127 becomes -1/255 = -0.00392).

Two engines compute the same numbers:

* ``"python"``: the upstream code path itself (PIL + torch), the reference;
* ``"cpp"``: ``deepencoder._C`` (``csrc/preprocess.cpp``): a re-implementation of Pillow's BICUBIC
  resampling in fixed point (bit-identical to PIL, see ``csrc/resample.h``), fused with pad, tiling and
  normalisation, writing straight into caller-provided float32/bfloat16/float16 buffers, multi-threaded
  across images and row bands with the GIL released.

``engine="auto"`` uses the C++ engine when the extension imports, else Python (with one warning).

Input conventions (both engines):

* alpha is dropped, as upstream's ``convert("RGB")`` does (no compositing onto a background);
* one channel (``L``, ``HxW`` or ``HxWx1`` arrays) is grey, replicated to RGB;
* 16-bit values ``v`` (``I;16`` images, ``uint16`` arrays) become ``round(v / 257)`` (0..65535 → 0..255);
  upstream's ``convert("RGB")`` would clip them at 255 instead, which turns most 16-bit images white.
  Mode ``I`` (32-bit) is clipped to 0..65535 first and treated the same way;
* EXIF orientation is applied to files and to PIL images that carry it.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .modes import Mode, choose_tile_grid, get_mode, resolve_max_tiles
from .views import Views  # noqa: F401  (re-exported: deepencoder.preprocess.Views)

FILL = 127  # upstream: tuple(int(x * 255) for x in mean), mean = 0.5
_CPP_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_DTYPES = _CPP_DTYPES + (torch.float64,)
_EXIF_ORIENTATION = 0x0112

try:
    from . import _C  # type: ignore[attr-defined]

    _CPP_ERROR: Optional[str] = None
except ImportError as e:  # built without a compiler, or the build failed
    _C = None
    _CPP_ERROR = f"{type(e).__name__}: {e}"

_warned_fallback = False


def cpp_available() -> bool:
    """True when the C++ engine (``deepencoder._C``) imported."""
    return _C is not None


def cpp_unavailable_reason() -> Optional[str]:
    """Why ``deepencoder._C`` did not import, or None when it did."""
    return _CPP_ERROR


# ------------------------------------------------------------------------------------------------
# Loading


def _open_file(path: Path) -> Image.Image:
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"expected an image file, got a directory: {str(path)!r}")
    if path.stat().st_size == 0:
        raise ValueError(f"image file is empty: {str(path)!r}")
    try:
        im = Image.open(path)
        im.load()
    except UnidentifiedImageError as e:
        raise ValueError(f"cannot identify image file {str(path)!r} (corrupt or not an image)") from e
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image file {str(path)!r}: {e}") from e
    return im


def _apply_exif(im: Image.Image) -> Image.Image:
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels as stored
        return im
    return ImageOps.exif_transpose(im) if orientation not in (None, 1) else im


def _check_size(w: int, h: int, what: str) -> None:
    if w <= 0 or h <= 0:
        raise ValueError(f"zero-size image: {what} is {w}x{h}")


def _u16_to_u8(a: np.ndarray) -> np.ndarray:
    """round(v / 257) for 0..65535, exactly (v / 257 is never a tie)."""
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _check_array(a: np.ndarray) -> np.ndarray:
    """Validates an image array; returns it with native byte order (no copy when already native)."""
    if a.dtype.kind != "u" or a.dtype.itemsize not in (1, 2):
        raise TypeError(f"unsupported image array dtype {a.dtype} (expected uint8 or uint16), shape {a.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image array, got shape {a.shape} (dtype {a.dtype})")
    if a.ndim == 3 and a.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected 1, 3 or 4 channels, got shape {a.shape} (dtype {a.dtype})")
    _check_size(a.shape[1], a.shape[0], f"array of shape {a.shape}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _pil_to_array(im: Image.Image) -> np.ndarray:
    """PIL image → uint8/uint16 HxW or HxWxC array with the conventions above (alpha kept, ignored later)."""
    mode = im.mode
    if mode in ("RGB", "L", "RGBA", "RGBX"):
        return np.asarray(im)
    if mode == "LA":
        return np.asarray(im)[:, :, 0]
    if mode.startswith("I;16"):
        return _check_array(np.asarray(im))
    if mode == "I":
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
    try:
        with warnings.catch_warnings():  # P + bytes transparency: alpha is dropped on purpose
            warnings.simplefilter("ignore", UserWarning)
            return np.asarray(im.convert("RGB"))
    except (ValueError, OSError) as e:
        raise TypeError(f"unsupported PIL image mode {mode!r}: {e}") from e


def _to_source(src) -> Union[np.ndarray, Image.Image]:
    """Path / PIL / array → a PIL image (EXIF applied, loaded) or a validated array."""
    if isinstance(src, (str, os.PathLike)):
        im = _apply_exif(_open_file(Path(src)))
        _check_size(im.width, im.height, f"file {str(src)!r}")
        return im
    if isinstance(src, (bytes, bytearray)):
        if not src:
            raise ValueError("image bytes are empty")
        try:
            im = Image.open(io.BytesIO(src))
            im.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"cannot read image from {len(src)} bytes: {e}") from e
        return _apply_exif(im)
    if isinstance(src, Image.Image):
        _check_size(src.width, src.height, f"PIL image (mode {src.mode})")
        return _apply_exif(src)
    if isinstance(src, np.ndarray):
        return _check_array(src)
    if isinstance(src, torch.Tensor):
        raise TypeError("torch tensors are not accepted as images: pass a HxWxC uint8 numpy array "
                        "(tensor.numpy()) or a PIL image")
    raise TypeError(f"unsupported image type {type(src).__name__}: expected a path, PIL image or numpy array")


def _array_to_rgb8(a: np.ndarray) -> np.ndarray:
    if a.dtype.itemsize == 2:
        a = _u16_to_u8(a)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def load_image(src) -> Image.Image:
    """Any accepted input → PIL RGB image (upstream's ``exif_transpose`` + ``convert("RGB")``).

    Accepts a path (str / Path), encoded bytes, a PIL image (RGB, L, LA, RGBA, P, I;16, I;16B, I, CMYK,
    and anything else PIL converts to RGB), or a uint8 / uint16 numpy array HxW, HxWx1, HxWx3, HxWx4.
    Alpha is dropped; 16-bit values become round(v / 257).

    Raises FileNotFoundError (missing file), ValueError (empty / corrupt file, zero size, bad shape),
    TypeError (unsupported dtype, mode or object).
    """
    s = _to_source(src)
    if isinstance(s, Image.Image):
        if s.mode == "RGB":
            return s
        if s.mode != "I" and not s.mode.startswith("I;16"):
            try:
                with warnings.catch_warnings():  # P + bytes transparency: alpha is dropped on purpose
                    warnings.simplefilter("ignore", UserWarning)
                    return s.convert("RGB")
            except (ValueError, OSError) as e:
                raise TypeError(f"unsupported PIL image mode {s.mode!r}: {e}") from e
        s = _pil_to_array(s)
    return Image.fromarray(_array_to_rgb8(s), "RGB")


# ------------------------------------------------------------------------------------------------
# Views


def view_shapes(width: int, height: int, mode="base", max_tiles: Optional[int] = None, family: str = "ocr1"):
    """((3, S, S), (n, 3, T, T) or None, (cols, rows)) for an image of this size (T: the family's tile)."""
    m = get_mode(mode, family)
    max_tiles = resolve_max_tiles(m, max_tiles)
    grid = choose_tile_grid(width, height, max_tiles, family=m.family) if m.crop else (1, 1)
    n = grid[0] * grid[1]
    tiles = (n, 3, m.tile_size, m.tile_size) if n > 1 else None
    return (3, m.base_size, m.base_size), tiles, grid


def views_numel(width: int, height: int, mode="base", max_tiles: Optional[int] = None,
                family: str = "ocr1") -> int:
    """Elements needed to hold all views of one image (for a reusable ``out`` buffer)."""
    g, t, _ = view_shapes(width, height, mode, max_tiles, family)
    return int(np.prod(g)) + (int(np.prod(t)) if t else 0)


def pad_square(im: Image.Image, size: int) -> Image.Image:
    """Upstream's global view (both families): ``ImageOps.pad`` to ``size``² on fill (127, 127, 127)."""
    return ImageOps.pad(im, (size, size), color=(FILL, FILL, FILL))


def _normalise(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 → [3, H, W] float32: torchvision ToTensor then Normalize(0.5, 0.5)."""
    t = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    return t.to(torch.float32).div(255).sub(0.5).div(0.5)


def _preprocess_python(im: Image.Image, m: Mode, max_tiles: int, dtype: torch.dtype) -> Views:
    w, h = im.size
    S, T = m.base_size, m.tile_size
    g = pad_square(im, S) if m.pad else im.resize((S, S))
    global_view = _normalise(np.asarray(g)).to(dtype)
    grid, tiles = (1, 1), None
    if m.crop:
        grid = choose_tile_grid(w, h, max_tiles, family=m.family)
        cols, rows = grid
        if cols * rows > 1:
            resized = _normalise(np.asarray(im.resize((T * cols, T * rows))))
            # [3, rows*T, cols*T] → [rows*cols, 3, T, T], row-major: the same pixels as upstream's crops
            tiles = (resized.view(3, rows, T, cols, T).permute(1, 3, 0, 2, 4)
                     .reshape(rows * cols, 3, T, T).to(dtype).contiguous())
    return Views(global_view, tiles, grid, (w, h), m.name, max_tiles, m.family)


# ------------------------------------------------------------------------------------------------
# C++ engine glue


@lru_cache(maxsize=None)
def _configure_cpp() -> str:
    """Match the C++ resampling pass order to the installed Pillow (probed once on a tiny image).

    Pillow >= 13 runs the vertical pass first when the height shrinks much more than the width; older
    Pillow always starts horizontally. The order decides the 8-bit rounding between the passes.
    """
    rng = np.random.default_rng(1234)
    a = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(a).resize((37, 11)))  # width grows, height shrinks: orders differ
    for order in ("pillow13", "horizontal_first"):
        _C.set_pass_order(order)
        if np.array_equal(_C.resize_u8(a, 37, 11)[:, :, 0], ref):
            return order
    _C.set_pass_order("pillow13")
    warnings.warn("the installed Pillow resamples differently from both known pass orders; "
                  "deepencoder's C++ preprocessing may differ from PIL by a few levels", RuntimeWarning,
                  stacklevel=3)
    return "unknown"


def _resolve_engine(engine: str) -> str:
    global _warned_fallback
    if engine not in ("auto", "python", "cpp"):
        raise ValueError(f"engine must be 'auto', 'python' or 'cpp', got {engine!r}")
    if engine == "auto":
        if _C is not None:
            return "cpp"
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"deepencoder._C is not available ({_CPP_ERROR}); using the slower Python "
                          "preprocessing path. Reinstall with a C++ compiler to build it.",
                          RuntimeWarning, stacklevel=3)
        return "python"
    if engine == "cpp" and _C is None:
        raise RuntimeError(f"engine='cpp' requested but deepencoder._C is not available ({_CPP_ERROR})")
    return engine


def selected_engine(engine: str = "auto") -> str:
    """The engine ``preprocess(..., engine=engine)`` will use: "cpp" or "python"."""
    return _resolve_engine(engine)


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _source_array(s) -> np.ndarray:
    return _pil_to_array(s) if isinstance(s, Image.Image) else s


def _alloc_views(sizes, ms, max_tiles, dtype, out):
    """Output tensors per image of (width, height) ``sizes``, carved from ``out`` (1-D) when given."""
    shapes = [view_shapes(w, h, m, max_tiles) for (w, h), m in zip(sizes, ms)]
    if out is not None:
        need = sum(int(np.prod(g)) + (int(np.prod(t)) if t else 0) for g, t, _ in shapes)
        if not isinstance(out, torch.Tensor) or out.dim() != 1 or not out.is_contiguous():
            raise ValueError("out must be a contiguous 1-D torch tensor")
        if out.dtype != dtype:
            raise TypeError(f"out has dtype {out.dtype}, expected {dtype}")
        if out.device.type != "cpu":
            raise ValueError(f"out must be a CPU tensor (pinned is fine), got device {out.device}")
        if out.numel() < need:
            raise ValueError(f"out holds {out.numel()} elements, {need} needed")
    res, off = [], 0
    for g, t, grid in shapes:
        if out is None:
            gv = torch.empty(g, dtype=dtype)
            tv = torch.empty(t, dtype=dtype) if t else None
        else:
            n = int(np.prod(g))
            gv = out[off:off + n].view(g)
            off += n
            tv = None
            if t:
                n = int(np.prod(t))
                tv = out[off:off + n].view(t)
                off += n
        res.append((gv, tv, grid))
    return res


def _run_cpp(arrs, ms, max_tiles, dtype, threads, out=None) -> List[Views]:
    _configure_cpp()
    work_dtype = dtype if dtype in _CPP_DTYPES else torch.float32
    if out is not None and work_dtype != dtype:
        raise TypeError(f"out buffers must be float32, bfloat16 or float16, got {dtype}")
    bufs = _alloc_views([(a.shape[1], a.shape[0]) for a in arrs], ms, max_tiles, work_dtype, out)
    _C.preprocess_into(arrs, [m.name for m in ms], max_tiles, [b[0] for b in bufs], [b[1] for b in bufs],
                       [b[2] for b in bufs], threads, family=ms[0].family if ms else "ocr1")
    res = []
    for a, m, (gv, tv, grid) in zip(arrs, ms, bufs):
        if work_dtype != dtype:
            gv = gv.to(dtype)
            tv = tv.to(dtype) if tv is not None else None
        res.append(Views(gv, tv, grid, (a.shape[1], a.shape[0]), m.name, max_tiles, m.family))
    return res


def _check_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or dtype not in _DTYPES:
        raise TypeError(f"unsupported output dtype {dtype!r}: views are normalised floats, choose one of "
                        "torch.float32, torch.bfloat16, torch.float16, torch.float64")
    return dtype


def _modes_for(modes, n: int, family: str) -> List[Mode]:
    ms = [get_mode(modes, family)] * n if isinstance(modes, (str, Mode)) else [get_mode(x, family) for x in modes]
    if len(ms) != n:
        raise ValueError(f"{n} images but {len(ms)} modes")
    fams = sorted({m.family for m in ms})
    if len(fams) > 1:
        raise ValueError(f"one batch holds one model family, got modes of {', '.join(fams)}")
    return ms


# ------------------------------------------------------------------------------------------------
# Public API


def preprocess(image, mode="base", max_tiles: Optional[int] = None, dtype: torch.dtype = torch.float32,
               engine: str = "auto", threads: Optional[int] = None, family: str = "ocr1") -> Views:
    """One image → :class:`Views` (see the module docstring for the exact upstream semantics).

    image: path, bytes, PIL image or uint8/uint16 numpy array (see :func:`load_image`).
    family: "ocr1" (DeepSeek-OCR) or "ocr2" (DeepSeek-OCR 2). mode: ocr1 tiny | small | base | large |
    gundam; ocr2 gundam | base. max_tiles: Gundam grid MAX (None: the family's default, ocr1 9 as the
    HF code (vLLM uses 6), ocr2 6). dtype: float32, bfloat16, float16 (written directly by the C++
    engine) or float64 (cast from float32); anything else is refused. engine: auto | python | cpp.
    threads: C++ worker threads (default: all cores).
    """
    m = get_mode(mode, family)
    max_tiles = resolve_max_tiles(m, max_tiles)
    dtype = _check_dtype(dtype)
    eng = _resolve_engine(engine)
    src = _to_source(image)
    if eng == "python":
        return _preprocess_python(load_image(src), m, max_tiles, dtype)
    t = _default_threads() if threads is None else int(threads)
    return _run_cpp([_source_array(src)], [m], max_tiles, dtype, t)[0]


def preprocess_batch(images: Sequence, modes: Union[str, Sequence[str]] = "base",
                     max_tiles: Optional[int] = None, dtype: torch.dtype = torch.float32, engine: str = "auto",
                     threads: Optional[int] = None, out: Optional[torch.Tensor] = None,
                     family: str = "ocr1") -> List[Views]:
    """Many images → list of :class:`Views`, in one multi-threaded C++ call (GIL released).

    modes: one mode for all or one per image, all of ``family``. out: optional 1-D contiguous CPU tensor
    of ``dtype`` (e.g. pinned, reused across batches) holding at least ``sum(views_numel(...))`` elements;
    the views are carved from it in order (global view, then tiles, per image). The Python engine ignores
    threads. Other arguments as :func:`preprocess`.
    """
    images = list(images)
    ms = _modes_for(modes, len(images), family)
    max_tiles = resolve_max_tiles(ms[0] if ms else get_mode("gundam", family), max_tiles)
    dtype = _check_dtype(dtype)
    eng = _resolve_engine(engine)
    srcs = [_to_source(x) for x in images]
    if eng == "python":
        res = [_preprocess_python(load_image(s), m, max_tiles, dtype) for s, m in zip(srcs, ms)]
        if out is not None:
            bufs = _alloc_views([r.size for r in res], ms, max_tiles, dtype, out)
            for r, (gv, tv, _) in zip(res, bufs):
                gv.copy_(r.global_view)
                r.global_view = gv
                if tv is not None:
                    tv.copy_(r.tiles)
                    r.tiles = tv
        return res
    t = _default_threads() if threads is None else int(threads)
    return _run_cpp([_source_array(s) for s in srcs], ms, max_tiles, dtype, t, out)


def sample_page(width: int = 1240, height: int = 1754, seed: int = 0) -> np.ndarray:
    """A synthetic A4-at-150-dpi page (HxWx3 uint8): white paper, dark text-like strokes, a grey figure."""
    rng = np.random.default_rng(seed)
    page = np.full((height, width, 3), 250, np.uint8)
    for y in range(120, height - 160, 28):  # lines of "words"
        x = 100
        while x < width - 140:
            wlen = int(rng.integers(20, 90))
            page[y:y + 14, x:x + wlen] = rng.integers(0, 70, (14, wlen, 1), dtype=np.uint8)
            x += wlen + int(rng.integers(8, 20))
    fy, fx = height // 2, width // 4
    yy, xx = np.mgrid[0:300, 0:width // 2]
    page[fy:fy + 300, fx:fx + width // 2] = (128 + 100 * np.sin(xx / 17.0 + yy / 23.0))[..., None].astype(np.uint8)
    noise = rng.integers(-6, 7, page.shape)
    return np.clip(page.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def benchmark_pages(engine: str = "cpp", mode: str = "base", threads: int = 1, n: int = 8,
                    page: Optional[np.ndarray] = None, warmup: int = 1, family: str = "ocr1") -> float:
    """Pages per second preprocessing a 1240×1754 page ``n`` times (one batch call for the C++ engine).

    For the Python engine every page goes through PIL (as a PIL image, as upstream sees it).
    """
    page = sample_page() if page is None else page
    if engine == "python":
        im = Image.fromarray(page)
        for _ in range(warmup):
            preprocess(im, mode, engine="python", family=family)
        t0 = time.perf_counter()
        for _ in range(n):
            preprocess(im, mode, engine="python", family=family)
        return n / (time.perf_counter() - t0)
    pages = [page] * n
    for _ in range(warmup):
        preprocess_batch(pages[:max(1, threads)], mode, engine=engine, threads=threads, family=family)
    t0 = time.perf_counter()
    preprocess_batch(pages, mode, engine=engine, threads=threads, family=family)
    return n / (time.perf_counter() - t0)


__all__ = ["Views", "load_image", "preprocess", "preprocess_batch", "cpp_available", "cpp_unavailable_reason",
           "selected_engine",
           "view_shapes", "views_numel", "pad_square", "benchmark_pages", "sample_page"]
