"""deepencoder.preprocess: upstream semantics of every mode, every input kind, the clear errors, and the
engine choice. The Python engine is the reference (it *is* the upstream PIL code path); the C++ engine
is checked against it here on a few cases and exhaustively in test_csrc.py."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from deepencoder import modes
from deepencoder import preprocess as P

FILL_NORM = ((torch.tensor(127.0) / 255 - 0.5) / 0.5).item()  # computed in float32, as the views are
NO_EXT = os.environ.get("DEEPENCODER_NO_EXT") == "1"  # installed without a C++ compiler, by choice
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = ["python"] + (["cpp"] if P.cpp_available() else [])
MODE_SIZES = {"tiny": 512, "small": 640, "base": 1024, "large": 1280, "gundam": 1024}


def norm(pil_or_array) -> torch.Tensor:
    """Expected normalised [3, H, W] float32 of a uint8 RGB image (ToTensor + Normalize(0.5, 0.5))."""
    a = np.array(pil_or_array, dtype=np.uint8)
    return torch.from_numpy(a).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)


def rand_img(h, w, c=3, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    hi = 65536 if dtype == np.uint16 else 256
    shape = (h, w) if c == 0 else (h, w, c)
    return rng.integers(0, hi, shape, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Modes


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", list(MODE_SIZES))
def test_shapes_range_tokens(mode, engine):
    a = rand_img(700, 900, seed=1)
    v = P.preprocess(a, mode, engine=engine)
    S = MODE_SIZES[mode]
    assert v.global_view.shape == (3, S, S) and v.global_view.dtype == torch.float32
    assert v.global_view.min() >= -1 and v.global_view.max() <= 1
    assert v.size == (900, 700) and v.mode == mode
    assert v.num_tokens == modes.vision_token_count(900, 700, mode, 9)
    if mode == "gundam":
        assert v.grid == modes.choose_tile_grid(900, 700, 9)
        assert v.tiles.shape == (v.grid[0] * v.grid[1], 3, 640, 640)
        assert v.tiles.min() >= -1 and v.tiles.max() <= 1
    else:
        assert v.tiles is None and v.grid == (1, 1)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", ["base", "large", "gundam"])
def test_pad_fill_and_placement(mode, engine):
    S = MODE_SIZES[mode]
    a = rand_img(300, 600, seed=2)  # wide: resized to S x S/2, centred vertically
    v = P.preprocess(a, mode, engine=engine)
    g = v.global_view
    rh = round(300 / 600 * S)
    top = round((S - rh) * 0.5)
    assert torch.all(g[:, :top] == FILL_NORM)
    assert torch.all(g[:, top + rh:] == FILL_NORM)
    expect = norm(ImageOps.pad(Image.fromarray(a), (S, S), color=(127, 127, 127)))
    assert torch.equal(g, expect)
    # a tall image pads left and right
    v = P.preprocess(rand_img(600, 300, seed=3), mode, engine=engine)
    rw = round(300 / 600 * S)
    left = round((S - rw) * 0.5)
    assert torch.all(v.global_view[:, :, :left] == FILL_NORM)
    assert torch.all(v.global_view[:, :, left + rw:] == FILL_NORM)


def test_fill_value_exact():
    v = P.preprocess(rand_img(10, 1000, seed=4), "base", engine="python")
    assert v.global_view[0, 0, 0].item() == pytest.approx(FILL_NORM, abs=0)
    assert FILL_NORM == pytest.approx(-0.00392156862745098, abs=1e-7)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", ["tiny", "small"])
def test_tiny_small_plain_resize(mode, engine):
    S = MODE_SIZES[mode]
    a = rand_img(333, 1000, seed=5)  # aspect not kept, no pad
    v = P.preprocess(a, mode, engine=engine)
    assert torch.equal(v.global_view, norm(Image.fromarray(a).resize((S, S))))
    flat = np.full((333, 1000, 3), 200, np.uint8)  # a flat image stays flat: no pad border anywhere
    g = P.preprocess(flat, mode, engine=engine).global_view
    assert torch.all(g == ((torch.tensor(200.0) / 255 - 0.5) / 0.5).item())


@pytest.mark.parametrize("engine", ENGINES)
def test_gundam_tiles_row_major(engine):
    a = rand_img(1100, 1500, seed=6)
    v = P.preprocess(a, "gundam", engine=engine)
    cols, rows = v.grid
    assert (cols, rows) == modes.choose_tile_grid(1500, 1100, 9)
    assert cols * rows > 1
    resized = Image.fromarray(a).resize((640 * cols, 640 * rows))
    for idx in range(cols * rows):
        r, c = divmod(idx, cols)  # row-major
        crop = resized.crop((c * 640, r * 640, (c + 1) * 640, (r + 1) * 640))
        assert torch.equal(v.tiles[idx], norm(crop)), f"tile {idx}"
    g = ImageOps.pad(Image.fromarray(a), (1024, 1024), color=(127, 127, 127))
    assert torch.equal(v.global_view, norm(g))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("hw", [(640, 640), (1, 1), (640, 10), (300, 500)])
def test_gundam_small_images_no_tiles(hw, engine):
    v = P.preprocess(rand_img(*hw, seed=7), "gundam", engine=engine)
    assert v.tiles is None and v.grid == (1, 1)
    assert v.num_tokens == 273


@pytest.mark.parametrize("engine", ENGINES)
def test_gundam_max_tiles(engine):
    a = rand_img(1080, 1920, seed=8)
    assert P.preprocess(a, "gundam", max_tiles=9, engine=engine).grid == (4, 2)
    v6 = P.preprocess(a, "gundam", max_tiles=6, engine=engine)
    assert v6.grid == (2, 1) and v6.tiles.shape[0] == 2
    assert v6.num_tokens == modes.vision_token_count(1920, 1080, "gundam", 6)
    # 641 x 640: just over a tile
    assert P.preprocess(rand_img(640, 641, seed=9), "gundam", engine=engine).tiles is not None


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_output_dtypes(dtype, engine):
    a = rand_img(800, 700, seed=10)
    ref = P.preprocess(a, "gundam", engine="python")
    v = P.preprocess(a, "gundam", dtype=dtype, engine=engine)
    assert v.global_view.dtype == dtype and v.tiles.dtype == dtype
    assert torch.equal(v.global_view, ref.global_view.to(dtype))
    assert torch.equal(v.tiles, ref.tiles.to(dtype))


# ------------------------------------------------------------------------------------------------
# Input kinds


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("pil_mode", ["RGB", "L", "LA", "RGBA", "P", "CMYK", "1", "YCbCr"])
def test_pil_modes(pil_mode, engine):
    rgb = Image.fromarray(rand_img(90, 120, seed=11))
    im = rgb.convert(pil_mode)
    expect = im.convert("RGB")  # upstream: alpha dropped, palette / CMYK converted by PIL
    assert np.array_equal(np.asarray(P.load_image(im)), np.asarray(expect))
    for mode in ("base", "tiny"):
        v = P.preprocess(im, mode, engine=engine)
        r = P.preprocess(expect, mode, engine="python")
        assert torch.equal(v.global_view, r.global_view)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("pil_mode", ["I;16", "I;16B", "I"])
def test_pil_16bit_modes_scale_by_257(pil_mode, engine):
    a16 = rand_img(70, 50, c=0, seed=12, dtype=np.uint16)
    a16[0, :4] = [0, 128, 129, 65535]
    if pil_mode == "I":
        im = Image.fromarray(a16.astype(np.int32), "I")
    else:
        dt = "<u2" if pil_mode == "I;16" else ">u2"
        im = Image.frombytes(pil_mode, (50, 70), a16.astype(dt).tobytes())
        assert im.mode == pil_mode and np.array_equal(np.asarray(im), a16)
    got = np.asarray(P.load_image(im))
    expect8 = np.round(a16 / 257).astype(np.uint8)
    assert np.array_equal(got[..., 0], expect8) and np.array_equal(got[..., 2], expect8)
    assert list(got[0, :4, 0]) == [0, 0, 1, 255]
    v = P.preprocess(im, "base", engine=engine)
    r = P.preprocess(np.repeat(expect8[..., None], 3, axis=2), "base", engine="python")
    assert torch.equal(v.global_view, r.global_view)


def test_pil_mode_I_clips():
    im = Image.fromarray(np.array([[-5, 70000, 257]], np.int32), "I")
    assert list(np.asarray(P.load_image(im))[0, :, 0]) == [0, 255, 1]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape_c", [0, 1, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_array_inputs(shape_c, dtype, engine):
    a = rand_img(120, 90, c=shape_c, seed=13, dtype=dtype)
    a8 = ((a.astype(np.uint32) + 128) // 257).astype(np.uint8) if dtype == np.uint16 else a
    if shape_c in (0, 1):
        rgb = np.repeat(a8.reshape(120, 90, 1), 3, axis=2)
    else:
        rgb = a8[..., :3]  # alpha dropped
    assert np.array_equal(np.asarray(P.load_image(a)), rgb)
    v = P.preprocess(a, "gundam", engine=engine)
    r = P.preprocess(Image.fromarray(np.ascontiguousarray(rgb)), "gundam", engine="python")
    assert torch.equal(v.global_view, r.global_view)


def test_alpha_is_dropped_not_composited():
    a = rand_img(50, 60, c=4, seed=14)
    a[..., 3] = 0  # fully transparent: upstream still sees the colour channels
    assert np.array_equal(np.asarray(P.load_image(a)), a[..., :3])
    assert np.array_equal(np.asarray(P.load_image(Image.fromarray(a, "RGBA"))), a[..., :3])


@pytest.mark.parametrize("engine", ENGINES)
def test_strided_arrays(engine):
    base = rand_img(400, 700, c=4, seed=15)
    views = {
        "negative rows": base[::-1],
        "negative cols": base[:, ::-1],
        "every other col": base[:, ::2],
        "channel slice": base[:, :, :3],
        "fortran": np.asfortranarray(base[:, :, :3]),
        "bgr reversed channels": base[:, :, 2::-1],
    }
    for name, a in views.items():
        v = P.preprocess(a, "gundam", engine=engine)
        r = P.preprocess(np.ascontiguousarray(a), "gundam", engine="python")
        assert torch.equal(v.global_view, r.global_view), name
        assert (v.tiles is None) == (r.tiles is None), name
        if v.tiles is not None:
            assert torch.equal(v.tiles, r.tiles), name


def test_big_endian_uint16_array():
    a = rand_img(40, 30, c=3, seed=16, dtype=np.uint16)
    b = a.astype(">u2")
    for engine in ENGINES:
        assert torch.equal(P.preprocess(a, "tiny", engine=engine).global_view,
                           P.preprocess(b, "tiny", engine=engine).global_view)


@pytest.mark.parametrize("engine", ENGINES)
def test_path_and_bytes_input(tmp_path, engine):
    a = rand_img(200, 300, seed=17)
    p = tmp_path / "page.png"
    Image.fromarray(a).save(p)
    for src in (p, str(p), p.read_bytes()):
        v = P.preprocess(src, "base", engine=engine)
        assert torch.equal(v.global_view, P.preprocess(a, "base", engine="python").global_view)


def test_exif_orientation_applied(tmp_path):
    a = rand_img(40, 60, seed=18)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.png"
    im.save(p, exif=exif)
    loaded = P.load_image(p)
    assert loaded.size == (40, 60)
    assert np.array_equal(np.asarray(loaded), np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB")))
    for engine in ENGINES:
        v = P.preprocess(p, "base", engine=engine)
        assert v.size == (40, 60)
        assert torch.equal(v.global_view, P.preprocess(loaded, "base", engine="python").global_view)


# ------------------------------------------------------------------------------------------------
# Errors


def test_missing_file(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        P.load_image(p)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        P.preprocess(str(p))


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.*empty.png"):
        P.preprocess(p)


def test_corrupt_file(tmp_path):
    p = tmp_path / "junk.jpg"
    p.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ValueError, match="junk.jpg"):
        P.preprocess(p)
    good = tmp_path / "trunc.png"
    Image.fromarray(rand_img(200, 200, seed=19)).save(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="trunc.png"):
        P.preprocess(good)


def test_directory_path(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        P.load_image(tmp_path)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bad,exc,msg", [
    (np.zeros((10, 10, 3), np.float64), TypeError, "float64"),
    (np.zeros((10, 10, 3), np.int8), TypeError, "int8"),
    (np.zeros((10, 10, 3), np.int32), TypeError, "int32"),
    (np.zeros((10, 10, 3), bool), TypeError, "bool"),
    (np.zeros((2, 10, 10, 3), np.uint8), ValueError, r"\(2, 10, 10, 3\)"),
    (np.zeros((10,), np.uint8), ValueError, r"\(10,\)"),
    (np.zeros((10, 10, 2), np.uint8), ValueError, r"channels.*\(10, 10, 2\)"),
    (np.zeros((10, 10, 5), np.uint8), ValueError, r"channels.*\(10, 10, 5\)"),
    (np.zeros((0, 10, 3), np.uint8), ValueError, "zero-size"),
    (np.zeros((10, 0), np.uint8), ValueError, "zero-size"),
])
def test_bad_arrays(bad, exc, msg, engine):
    with pytest.raises(exc, match=msg):
        P.preprocess(bad, engine=engine)
    with pytest.raises(exc, match=msg):
        P.load_image(bad)


def test_bad_objects_and_args():
    with pytest.raises(TypeError, match="torch"):
        P.preprocess(torch.zeros(3, 10, 10))
    with pytest.raises(TypeError, match="list"):
        P.preprocess([[1, 2]])
    with pytest.raises(ValueError, match="zero-size"):
        P.preprocess(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match="unknown mode"):
        P.preprocess(rand_img(5, 5), "huge")
    with pytest.raises(ValueError, match="engine"):
        P.preprocess(rand_img(5, 5), engine="gpu")
    with pytest.raises(ValueError, match="empty"):
        P.preprocess(b"")


# ------------------------------------------------------------------------------------------------
# Batch, buffers, engine choice


@pytest.mark.parametrize("engine", ENGINES)
def test_batch_and_out_buffer(engine):
    imgs = [rand_img(700, 900, seed=20), rand_img(100, 80, c=0, seed=21), rand_img(2000, 500, c=4, seed=22)]
    ms = ["gundam", "tiny", "gundam"]
    need = sum(P.views_numel(a.shape[1], a.shape[0], m) for a, m in zip(imgs, ms))
    out = torch.full((need + 5,), float("nan"))
    res = P.preprocess_batch(imgs, ms, engine=engine, threads=2, out=out)
    assert not torch.isnan(out[:need]).any()
    assert torch.isnan(out[need:]).all()
    for a, m, r in zip(imgs, ms, res):
        ref = P.preprocess(a, m, engine="python")
        assert torch.equal(r.global_view, ref.global_view)
        assert r.global_view.data_ptr() >= out.data_ptr()
        assert (r.tiles is None) == (ref.tiles is None)
        if r.tiles is not None:
            assert torch.equal(r.tiles, ref.tiles)
    with pytest.raises(ValueError, match="elements"):
        P.preprocess_batch(imgs, ms, engine=engine, out=torch.empty(need - 1))
    with pytest.raises(TypeError, match="dtype"):
        P.preprocess_batch(imgs, ms, engine=engine, out=torch.empty(need, dtype=torch.float16))
    with pytest.raises(ValueError, match="modes"):
        P.preprocess_batch(imgs, ["base"], engine=engine)


def test_views_numel_and_shapes():
    assert P.view_shapes(1920, 1080, "gundam", 9) == ((3, 1024, 1024), (8, 3, 640, 640), (4, 2))
    assert P.view_shapes(100, 100, "large") == ((3, 1280, 1280), None, (1, 1))
    assert P.views_numel(1920, 1080, "gundam") == 3 * 1024 * 1024 + 8 * 3 * 640 * 640


def test_cpp_extension_built_and_picked():
    """A missing extension is a failure, not a skip: setup.py fails a broken build, and an install that
    skipped it must say so with DEEPENCODER_NO_EXT=1 (machines without a C++ compiler)."""
    if NO_EXT:
        pytest.skip("DEEPENCODER_NO_EXT=1: installed without deepencoder._C by choice")
    assert P.cpp_available(), (f"deepencoder._C did not import ({P.cpp_unavailable_reason()}): rebuild it "
                               "(make install), or set DEEPENCODER_NO_EXT=1 on a machine without a compiler")
    assert P.selected_engine("auto") == "cpp"
    assert P.selected_engine("python") == "python"
    assert P.cpp_unavailable_reason() is None


def test_broken_cpp_build_fails_setup(tmp_path):
    """setup.py no longer swallows a failed C++ build (it once installed silently without deepencoder._C)."""
    for f in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, f), tmp_path / f)
    (tmp_path / "deepencoder").mkdir()
    (tmp_path / "deepencoder" / "__init__.py").write_text("")
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "broken.cpp").write_text("this is not C++;\n")
    cmd = [sys.executable, "setup.py", "build_ext", "--build-lib", "lib", "--build-temp", "tmp"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in os.environ.items() if k != "DEEPENCODER_NO_EXT"})
    assert r.returncode != 0, r.stdout[-2000:]
    assert "DEEPENCODER_NO_EXT=1" in r.stderr, r.stderr[-2000:]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, DEEPENCODER_NO_EXT="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list(tmp_path.rglob("_C*.so"))


# ------------------------------------------------------------------------------------------------
# DeepSeek-OCR 2 views (family "ocr2")


def expected_pad(im: Image.Image, S: int) -> Image.Image:
    """ImageOps.pad written out (SPEC_V2): long side S, short side round(short/long*S), BICUBIC, pasted
    at round(0.5*(S - short)) (Python round: half to even) on (127, 127, 127)."""
    w, h = im.size
    rw, rh = (S, round(h / w * S)) if w >= h else (round(w / h * S), S)
    canvas = Image.new("RGB", (S, S), (127, 127, 127))
    canvas.paste(im.resize((rw, rh), Image.Resampling.BICUBIC), (round(0.5 * (S - rw)), round(0.5 * (S - rh))))
    return canvas


@pytest.mark.parametrize("engine", ENGINES)
def test_v2_gundam_views(engine):
    a = rand_img(700, 1300, seed=30)  # 1300x700: 2x1 tiles; global 1024x551 at y = round(236.5) = 236
    v = P.preprocess(a, "gundam", engine=engine, family="ocr2")
    assert v.family == "ocr2" and v.mode == "gundam" and v.max_tiles == 6 and v.size == (1300, 700)
    assert v.grid == (2, 1) and v.tiles.shape == (2, 3, 768, 768) and v.tiles.dtype == torch.float32
    assert v.global_view.shape == (3, 1024, 1024)
    assert v.num_tokens == 2 * 144 + 257
    g = v.global_view
    assert torch.all(g[:, :236] == FILL_NORM) and torch.all(g[:, 236 + 551:] == FILL_NORM)
    assert not torch.all(g[:, 236] == FILL_NORM) and not torch.all(g[:, 236 + 550] == FILL_NORM)
    assert FILL_NORM == pytest.approx(-0.00392, abs=1e-5)
    assert torch.equal(g, norm(expected_pad(Image.fromarray(a), 1024)))
    # tiles: the whole image squeezed to (768 cols, 768 rows), cut row-major as upstream's crop boxes
    b = rand_img(1754, 1240, seed=31)  # A4 portrait 1240x1754 -> 2x3
    v = P.preprocess(b, "gundam", engine=engine, family="ocr2")
    cols, rows = v.grid
    assert (cols, rows) == (2, 3) and v.tiles.shape == (6, 3, 768, 768) and v.num_tokens == 1121
    resized = Image.fromarray(b).resize((768 * cols, 768 * rows), Image.Resampling.BICUBIC)
    for i in range(cols * rows):
        box = ((i % cols) * 768, (i // cols) * 768, (i % cols + 1) * 768, (i // cols + 1) * 768)
        assert torch.equal(v.tiles[i], norm(resized.crop(box))), f"tile {i}"
    assert torch.equal(v.global_view, norm(expected_pad(Image.fromarray(b), 1024)))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("hw", [(768, 768), (1, 1), (10, 768), (700, 500), (768, 769)])
def test_v2_no_crops_at_or_under_768(hw, engine):
    a = rand_img(*hw, seed=32)
    v = P.preprocess(a, "gundam", engine=engine, family="ocr2")
    if hw[0] <= 768 and hw[1] <= 768:
        assert v.tiles is None and v.grid == (1, 1) and v.num_tokens == 257
    else:
        assert v.grid == (2, 2) and v.tiles.shape == (4, 3, 768, 768) and v.num_tokens == 4 * 144 + 257
    assert torch.equal(v.global_view, norm(expected_pad(Image.fromarray(a), 1024)))


@pytest.mark.parametrize("engine", ENGINES)
def test_v2_base_is_the_shared_padded_view(engine):
    """OCR-2's global view and OCR-1's base/gundam view are the same ImageOps.pad call: same pixels."""
    a = rand_img(1500, 1100, seed=33)
    v2b = P.preprocess(a, "base", engine=engine, family="ocr2")
    assert v2b.tiles is None and v2b.grid == (1, 1) and v2b.num_tokens == 257
    v2g = P.preprocess(a, "gundam", engine=engine, family="ocr2")
    v1 = P.preprocess(a, "base", engine=engine)
    assert torch.equal(v2b.global_view, v2g.global_view) and torch.equal(v2b.global_view, v1.global_view)
    assert torch.equal(v1.global_view, norm(P.pad_square(Image.fromarray(a), 1024)))


@pytest.mark.parametrize("engine", ENGINES)
def test_v2_batch_buffers_and_shapes(engine):
    assert P.view_shapes(1920, 1080, "gundam", family="ocr2") == ((3, 1024, 1024), (2, 3, 768, 768), (2, 1))
    assert P.view_shapes(1920, 1080, "base", family="ocr2") == ((3, 1024, 1024), None, (1, 1))
    imgs = [rand_img(900, 1700, seed=34), rand_img(300, 200, c=0, seed=35)]
    ms = ["gundam", "base"]
    need = sum(P.views_numel(a.shape[1], a.shape[0], m, family="ocr2") for a, m in zip(imgs, ms))
    out = torch.full((need,), float("nan"), dtype=torch.bfloat16)
    res = P.preprocess_batch(imgs, ms, engine=engine, out=out, dtype=torch.bfloat16, family="ocr2")
    assert not torch.isnan(out).any()
    for a, m, r in zip(imgs, ms, res):
        ref = P.preprocess(a, m, engine="python", family="ocr2")
        assert r.family == "ocr2" and r.grid == ref.grid
        assert torch.equal(r.global_view, ref.global_view.bfloat16())
        assert (r.tiles is None) == (ref.tiles is None)
        if r.tiles is not None:
            assert torch.equal(r.tiles, ref.tiles.bfloat16())
    with pytest.raises(ValueError, match="one model family"):
        P.preprocess_batch(imgs, [modes.get_mode("gundam", "ocr2"), modes.get_mode("tiny")], engine=engine)
    with pytest.raises(ValueError, match="unknown mode 'tiny' for model family 'ocr2'"):
        P.preprocess(imgs[0], "tiny", engine=engine, family="ocr2")
    with pytest.raises(ValueError, match="unknown model family"):
        P.preprocess(imgs[0], "base", engine=engine, family="ocr9")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32, torch.bool, torch.complex64,
                                   torch.float8_e4m3fn, "float32", np.float32])
def test_non_float_dtype_refused(dtype, engine):
    with pytest.raises(TypeError, match="unsupported output dtype"):
        P.preprocess(rand_img(20, 30, seed=36), "base", dtype=dtype, engine=engine)
    with pytest.raises(TypeError, match="unsupported output dtype"):
        P.preprocess_batch([rand_img(20, 30, seed=36)], "gundam", dtype=dtype, engine=engine, family="ocr2")


def test_fallback_without_extension_warns_once():
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["deepencoder._C"] = None  # import of the extension fails
        import deepencoder, numpy as np
        from deepencoder import preprocess as P
        assert not P.cpp_available() and P.cpp_unavailable_reason()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            a = np.zeros((20, 30, 3), np.uint8)
            v1 = P.preprocess(a, "base")
            v2 = P.preprocess(a, "gundam")
            P.preprocess_batch([a, a], "tiny")
        msgs = [str(x.message) for x in w if "deepencoder._C" in str(x.message)]
        assert len(msgs) == 1, msgs
        assert P.selected_engine() == "python"
        try:
            P.preprocess(a, engine="cpp")
        except RuntimeError as e:
            assert "not available" in str(e)
        else:
            raise AssertionError("engine='cpp' must fail without the extension")
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_benchmark_pages_smoke():
    for engine in ENGINES:
        assert P.benchmark_pages(engine, "tiny", threads=1, n=1, warmup=0) > 0
