"""Exercise a (sanitizer-instrumented) deepencoder._C build: every mode of both model families, channel
count, bit depth, stride pattern, thread count and kernel set, plus the error paths; check the pixels
against PIL.

Usage: python csrc/sanitize_driver.py PATH/TO/_C.so   (run by csrc/sanitize.sh under LD_PRELOAD=libasan)

Only numpy and PIL are imported (no torch: it is slow to load under ASan); bfloat16 output is reached
through a duck-typed stand-in for a torch tensor.
"""

import importlib
import importlib.util
import os
import sys
import types

import numpy as np
from PIL import Image, ImageOps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look the module up while the class is built
    spec.loader.exec_module(mod)
    return mod


C = _load("_C", sys.argv[1])
# deepencoder.modes (and the deepencoder.config it imports) without deepencoder/__init__.py, which
# imports torch: a bare package object pointing at the source folder
_pkg = types.ModuleType("deepencoder")
_pkg.__path__ = [os.path.join(ROOT, "deepencoder")]
sys.modules["deepencoder"] = _pkg
modes = importlib.import_module("deepencoder.modes")


class FakeBF16:
    """Looks like a contiguous CPU torch.bfloat16 tensor to the extension."""

    def __init__(self, shape):
        self.buf = np.zeros(shape, np.uint16)
        self.shape = shape
        self.dtype = "torch.bfloat16"

        class _Dev:
            type = "cpu"

        self.device = _Dev()

    def is_contiguous(self):
        return True

    def data_ptr(self):
        return self.buf.ctypes.data


def rgb8(a):
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def reference(a, m, max_tiles):
    im = Image.fromarray(rgb8(a), "RGB")
    S, T = m.base_size, m.tile_size
    g = ImageOps.pad(im, (S, S), color=(127, 127, 127)) if m.pad else im.resize((S, S))
    tiles = None
    if m.crop:
        cols, rows = modes.choose_tile_grid(im.width, im.height, max_tiles, family=m.family)
        if cols * rows > 1:
            r = np.asarray(im.resize((T * cols, T * rows)))
            tiles = r.reshape(rows, T, cols, T, 3).transpose(0, 2, 4, 1, 3).reshape(-1, 3, T, T)
    return np.asarray(g).transpose(2, 0, 1), tiles


F32 = np.array(C.norm_table("float32"), np.float32)
F16 = np.array(C.norm_table("float16"), np.uint16).view(np.float16)
BF16 = np.array(C.norm_table("bfloat16"), np.uint16)


def run_case(a, mode, max_tiles=9, threads=1, kind="f32", family="ocr1"):
    h, w = a.shape[:2]
    m = modes.get_mode(mode, family)
    S, T = m.base_size, m.tile_size
    grid = modes.choose_tile_grid(w, h, max_tiles, family=family) if m.crop else (1, 1)
    n = grid[0] * grid[1]

    def make(shape):
        if kind == "f32":
            return np.full(shape, np.nan, np.float32)
        if kind == "f16":
            return np.full(shape, np.nan, np.float16)
        return FakeBF16(shape)

    g = make((3, S, S))
    t = make((n, 3, T, T)) if n > 1 else None
    got = C.preprocess_into([a], [mode], max_tiles, [g], [t], None, threads, family=family)
    assert tuple(got[0]) == tuple(grid), (got, grid)
    rg, rt = reference(a, m, max_tiles)
    table = {"f32": F32, "f16": F16, "bf16": BF16}[kind]
    gb = g.buf if kind == "bf16" else g
    assert np.array_equal(gb, table[rg]), f"global view differs: {a.shape} {a.dtype} {mode} {kind}"
    if n > 1:
        tb = t.buf if kind == "bf16" else t
        assert np.array_equal(tb, table[rt]), f"tiles differ: {a.shape} {a.dtype} {mode} {kind}"


def expect(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return
    raise AssertionError(f"expected {exc.__name__}")


def main():
    rng = np.random.default_rng(0)
    n = 0
    shapes = [(1, 1), (1, 9), (9, 1), (2, 1500), (1500, 2), (641, 640), (640, 641), (13, 17), (333, 701),
              (700, 520), (1000, 1700)]
    for simd in (True, False):
        C.set_simd(simd)
        for i, (h, w) in enumerate(shapes):
            for c in (1, 3, 4):
                dtype = np.uint16 if (i + c) % 3 == 0 else np.uint8
                hi = 65536 if dtype == np.uint16 else 256
                a = rng.integers(0, hi, (h, w, c) if c != 1 or i % 2 else (h, w), dtype=dtype)
                if i % 4 == 1:
                    a = a[::-1]  # negative row stride
                elif i % 4 == 2:
                    a = np.asfortranarray(a)
                mode = ["tiny", "small", "base", "large", "gundam"][(i + c) % 5]
                if max(h, w) > 640 or i % 3 == 0:
                    mode = "gundam"
                kind = ["f32", "f16", "bf16"][(i + c + simd) % 3]
                run_case(a, mode, max_tiles=[9, 6, 2][i % 3], threads=1 + (i + c) % 3, kind=kind)
                n += 1
        # a strided (every other column, negative) view
        big = rng.integers(0, 256, (900, 1400, 3), dtype=np.uint8)
        run_case(big[::-1, ::2], "gundam", threads=3)
        run_case(big[:, ::-1, :], "base", threads=2, kind="bf16")
        n += 2
        # DeepSeek-OCR 2: 768 tiles (MAX 6 by default), the padded 1024 view, the <= 768 gate
        for i, (h, w) in enumerate([(1, 1), (768, 769), (616, 770), (5, 1600), (1300, 900), (768, 768)]):
            a = rng.integers(0, 256, (h, w, 3) if i % 2 else (h, w), dtype=np.uint8)
            run_case(a[::-1] if i % 3 == 1 else a, ["gundam", "base"][i % 5 == 4], max_tiles=[None, 2][i % 4 == 3],
                     threads=1 + i % 3, kind=["f32", "f16", "bf16"][(i + simd) % 3], family="ocr2")
            n += 1

    # error paths: each must raise, never crash
    a = np.zeros((10, 10, 3), np.uint8)
    g = np.zeros((3, 1024, 1024), np.float32)
    expect(TypeError, C.preprocess_into, [a.astype(np.float64)], ["base"], 9, [g], [None], None, 1)
    expect(TypeError, C.preprocess_into, [a.astype(np.int8)], ["base"], 9, [g], [None], None, 1)
    expect(ValueError, C.preprocess_into, [np.zeros((2, 3, 4, 5), np.uint8)], ["base"], 9, [g], [None], None, 1)
    expect(ValueError, C.preprocess_into, [np.zeros((4, 4, 2), np.uint8)], ["base"], 9, [g], [None], None, 1)
    expect(ValueError, C.preprocess_into, [np.zeros((0, 4, 3), np.uint8)], ["base"], 9, [g], [None], None, 1)
    expect(ValueError, C.preprocess_into, [a], ["base"], 9, [np.zeros((3, 1024, 1000), np.float32)], [None], None, 1)
    expect(TypeError, C.preprocess_into, [a], ["base"], 9, [np.zeros((3, 1024, 1024), np.float64)], [None], None, 1)
    expect(ValueError, C.preprocess_into, [a], ["base"], 9, [np.zeros((3, 1024, 2048), np.float32)[:, :, ::2]],
           [None], None, 1)
    ro = np.zeros((3, 1024, 1024), np.float32)
    ro.flags.writeable = False
    expect(ValueError, C.preprocess_into, [a], ["base"], 9, [ro], [None], None, 1)
    expect(ValueError, C.preprocess_into, [a], ["nope"], 9, [g], [None], None, 1)
    expect(ValueError, C.preprocess_into, [np.zeros((700, 1400, 3), np.uint8)], ["gundam"], 9, [g], [None], None, 1)
    expect(TypeError, C.preprocess_into, ["not an array"], ["base"], 9, [g], [None], None, 1)
    expect(ValueError, C.preprocess_into, [a], ["base"], 9, [g], [None], None, 0)
    expect(ValueError, C.preprocess_into, [a], ["tiny"], None, [g], [None], None, 1, "ocr2")
    expect(ValueError, C.preprocess_into, [a], ["base"], None, [g], [None], None, 1, "ocr3")
    expect(ValueError, C.preprocess_into, [np.zeros((700, 1400, 3), np.uint8)], ["gundam"], None, [g],
           [np.zeros((2, 3, 640, 640), np.float32)], None, 1, "ocr2")
    print(f"sanitize_driver: {n} cases + error paths OK")


if __name__ == "__main__":
    main()
