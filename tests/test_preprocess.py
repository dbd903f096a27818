"""deepencoder.preprocess: upstream semantics of every mode, every input kind, the clear errors, and the
engine choice. The Python engine is the reference (it *is* the upstream PIL code path); the C++ engine
is checked against it here on a few cases and exhaustively in test_csrc.py."""

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


@pytest.mark.skipif(not P.cpp_available(), reason="deepencoder._C not built")
def test_auto_picks_cpp():
    assert P.selected_engine("auto") == "cpp"
    assert P.selected_engine("python") == "python"
    assert P.cpp_unavailable_reason() is None


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
