"""deepencoder._C (csrc/preprocess.cpp, csrc/resample.h) against PIL and the Python engine.

Contract: every view within 1/255 of PIL before normalisation (2/255 after). Measured: identical
(max |diff| = 0, bit for bit in float32, bfloat16 and float16) on x86-64, in both kernel sets (AVX2 and
scalar), for every size tried, including 1x1, 1x12000 and 9000x9000; test_bit_exact_here pins that.
"""

import platform
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from deepencoder import modes
from deepencoder import preprocess as P

if not P.cpp_available():  # test_preprocess.py::test_cpp_extension_built_and_picked fails for this
    pytest.skip(f"deepencoder._C not importable ({P.cpp_unavailable_reason()})", allow_module_level=True)
C = P._C

BOUND = 2 / 255 + 1e-6  # 1/255 before normalisation
KERNELS = ["avx2", "scalar"] if C.simd() == "avx2" else ["scalar"]
MODES = ["tiny", "small", "base", "large", "gundam"]
MODES_V2 = ["gundam", "base"]
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(params=KERNELS)
def kernels(request):
    prev = C.set_simd(request.param == "avx2")
    yield request.param
    C.set_simd(prev)


class kernel_set:
    def __init__(self, name):
        self.on = name == "avx2"

    def __enter__(self):
        self.prev = C.set_simd(self.on)

    def __exit__(self, *exc):
        C.set_simd(self.prev)


def smooth_img(h, w, c, seed, dtype=np.uint8):
    """Random low-frequency content plus noise: exercises both clipping and fine rounding."""
    if h * w > 4_000_000:  # huge: tile a smaller image (cheap to make, same resampling work)
        small = smooth_img(min(h, 1500), min(w, 1500), c, seed, dtype)
        reps = (-(-h // small.shape[0]), -(-w // small.shape[1])) + (1,) * (small.ndim - 2)
        return np.ascontiguousarray(np.tile(small, reps)[:h, :w])
    rng = np.random.default_rng(seed)
    hi = 65535 if dtype == np.uint16 else 255
    yy = np.linspace(0, rng.uniform(1, 20), h)[:, None]
    xx = np.linspace(0, rng.uniform(1, 20), w)[None, :]
    base = 0.5 + 0.45 * np.sin(yy + rng.uniform(0, 6)) * np.cos(xx * rng.uniform(0.5, 2))
    chans = [np.clip(base * hi + rng.normal(0, hi * 0.15, (h, w)), 0, hi) for _ in range(max(c, 1))]
    a = np.stack(chans, axis=-1).astype(dtype)
    if rng.random() < 0.3:  # hard edges and saturation
        a[: h // 2] = hi
    return a[..., 0] if c == 0 else a


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def assert_views_agree(a, mode, max_tiles=9, threads=1, bound=BOUND, family="ocr1"):
    cpp = P.preprocess(a, mode, max_tiles=max_tiles, engine="cpp", threads=threads, family=family)
    py = P.preprocess(a, mode, max_tiles=max_tiles, engine="python", family=family)
    assert cpp.grid == py.grid and cpp.size == py.size and cpp.family == py.family == family
    d = max_diff(cpp.global_view, py.global_view)
    assert d <= bound, f"global view: max |diff| {d} for {a.shape} {a.dtype} {mode}"
    assert (cpp.tiles is None) == (py.tiles is None)
    if cpp.tiles is not None:
        dt = max_diff(cpp.tiles, py.tiles)
        assert dt <= bound, f"tiles: max |diff| {dt} for {a.shape} {a.dtype} {mode}"
        d = max(d, dt)
    return d


# ------------------------------------------------------------------------------------------------
# Arithmetic pieces


def test_norm_tables_match_torch():
    v = torch.arange(256, dtype=torch.uint8).float().div(255).sub(0.5).div(0.5)
    assert C.norm_table("float32") == v.tolist()
    for name, dt in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        bits = v.to(dt).view(torch.int16).to(torch.int32).bitwise_and(0xFFFF).tolist()
        assert C.norm_table(name) == bits, name


def test_tile_grid_matches_modes_exhaustively():
    sizes = list(range(1, 3000, 37)) + [639, 640, 641, 1280, 1281, 1920, 12000]
    for max_tiles in range(2, 13):
        for w in sizes:
            for h in sizes:
                assert C.tile_grid(w, h, max_tiles) == modes.choose_tile_grid(w, h, max_tiles), (w, h, max_tiles)


def test_tile_grid_matches_modes_exhaustively_v2():
    sizes = list(range(1, 3000, 53)) + [767, 768, 769, 770, 1536, 1537, 2304, 4000, 12000]
    for max_tiles in (None, 2, 3, 4, 9):
        for w in sizes:
            for h in sizes:
                assert C.tile_grid(w, h, max_tiles, "ocr2") == modes.choose_tile_grid(w, h, max_tiles, family="ocr2"), \
                    (w, h, max_tiles)
    assert C.tile_grid(770, 616, family="ocr2") == (2, 2) and C.tile_grid(4000, 3200, family="ocr2") == (3, 2)
    assert C.tile_grid(1920, 1080, family="ocr2") == (2, 1) and C.tile_grid(1920, 1080) == (4, 2)


@settings(max_examples=300, **SETTINGS)
@given(st.integers(1, 20000), st.integers(1, 20000), st.integers(2, 16))
@example(800, 640, 2)  # aspect 1.25: the (1,2)/(2,1) tie, decided by candidate order
@example(800, 640, 3)
@example(1920, 1080, 9)
@example(1920, 1080, 6)
def test_tile_grid_property(w, h, max_tiles):
    assert C.tile_grid(w, h, max_tiles) == modes.choose_tile_grid(w, h, max_tiles)


@settings(max_examples=200, **SETTINGS)
@given(st.integers(1, 6000), st.integers(1, 6000), st.sampled_from([512, 640, 1024, 1280]))
@example(1, 12000, 1024)
@example(3, 2, 1024)
@example(5, 3, 1024)
def test_pad_geometry_matches_pil(w, h, S):
    im = Image.new("1", (w, h))  # mode "1" resizes with NEAREST: cheap, same geometry
    resized = ImageOps.contain(im, (S, S))
    rw, rh, px, py = C.pad_geometry(w, h, S)
    assert (rw, rh) == resized.size
    if resized.size != (S, S):
        if rw != S:
            assert (px, py) == (round((S - rw) * 0.5), 0)
        else:
            assert (px, py) == (0, round((S - rh) * 0.5))


def test_pass_order_probe_matches_installed_pillow():
    order = P._configure_cpp()
    assert order in ("pillow13", "horizontal_first")
    assert C.pass_order() == order


@settings(max_examples=60, **SETTINGS)
@given(st.integers(1, 400), st.integers(1, 400), st.integers(1, 700), st.integers(1, 700),
       st.sampled_from([0, 3, 4]), st.sampled_from(KERNELS))
@example(1, 1, 1024, 1024, 3, KERNELS[0])
@example(1, 600, 512, 512, 0, KERNELS[-1])
@example(400, 3, 37, 11, 3, KERNELS[0])
def test_resize_u8_bit_exact(h, w, ow, oh, c, kset):
    P._configure_cpp()
    a = smooth_img(h, w, c, seed=h * 1000 + w)
    ref = np.asarray(Image.fromarray(a).convert("RGB").resize((ow, oh)))
    with kernel_set(kset):
        got = C.resize_u8(a, ow, oh)
    assert np.array_equal(got, ref)


# ------------------------------------------------------------------------------------------------
# Whole views: C++ engine vs the Python (PIL) engine


@settings(max_examples=40, **SETTINGS)
@given(h=st.integers(1, 1500), w=st.integers(1, 1500), c=st.sampled_from([0, 1, 3, 4]),
       dtype=st.sampled_from([np.uint8, np.uint16]), mode=st.sampled_from(MODES),
       max_tiles=st.sampled_from([9, 6, 2]), threads=st.integers(1, 3), kset=st.sampled_from(KERNELS))
@example(h=1, w=1, c=3, dtype=np.uint8, mode="gundam", max_tiles=9, threads=1, kset=KERNELS[0])
@example(h=1, w=12000, c=3, dtype=np.uint8, mode="gundam", max_tiles=9, threads=2, kset=KERNELS[0])
@example(h=12000, w=1, c=0, dtype=np.uint8, mode="gundam", max_tiles=9, threads=3, kset=KERNELS[-1])
@example(h=12000, w=1, c=4, dtype=np.uint16, mode="tiny", max_tiles=9, threads=1, kset=KERNELS[0])
@example(h=7, w=9000, c=3, dtype=np.uint8, mode="large", max_tiles=9, threads=2, kset=KERNELS[0])
@example(h=641, w=640, c=3, dtype=np.uint8, mode="gundam", max_tiles=2, threads=2, kset=KERNELS[0])
def test_views_agree_property(h, w, c, dtype, mode, max_tiles, threads, kset):
    a = smooth_img(h, w, c, seed=h * 7919 + w, dtype=dtype)
    with kernel_set(kset):
        assert_views_agree(a, mode, max_tiles, threads)


@settings(max_examples=12, **SETTINGS)
@given(h=st.integers(1, 2400), w=st.integers(1, 2400), c=st.sampled_from([0, 3, 4]),
       dtype=st.sampled_from([np.uint8, np.uint16]), mode=st.sampled_from(MODES_V2),
       max_tiles=st.sampled_from([None, 6, 2]), threads=st.integers(1, 3), kset=st.sampled_from(KERNELS))
@example(h=616, w=770, c=3, dtype=np.uint8, mode="gundam", max_tiles=None, threads=2, kset=KERNELS[0])
@example(h=768, w=768, c=3, dtype=np.uint8, mode="gundam", max_tiles=None, threads=1, kset=KERNELS[-1])
@example(h=768, w=769, c=0, dtype=np.uint8, mode="gundam", max_tiles=None, threads=3, kset=KERNELS[0])
@example(h=10, w=3000, c=4, dtype=np.uint16, mode="gundam", max_tiles=None, threads=2, kset=KERNELS[0])
@example(h=1754, w=1240, c=3, dtype=np.uint8, mode="gundam", max_tiles=None, threads=2, kset=KERNELS[-1])
@example(h=1, w=1, c=3, dtype=np.uint8, mode="base", max_tiles=None, threads=1, kset=KERNELS[0])
def test_views_agree_property_v2(h, w, c, dtype, mode, max_tiles, threads, kset):
    """OCR-2 views (768 tiles, MAX 6, the padded 1024 view) bit-identical to the PIL path."""
    a = smooth_img(h, w, c, seed=h * 7919 + w, dtype=dtype)
    with kernel_set(kset):
        d = assert_views_agree(a, mode, max_tiles, threads, family="ocr2")
    assert d == 0.0 or platform.machine() not in ("x86_64", "AMD64")


@pytest.mark.parametrize("hw,mode", [((9000, 9000), "gundam"), ((9000, 6000), "base")])
def test_views_agree_huge(hw, mode):
    a = smooth_img(*hw, 3, seed=9)
    assert assert_views_agree(a, mode, threads=2) == 0.0 or platform.machine() not in ("x86_64", "AMD64")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="bit-exactness pinned on x86-64")
def test_bit_exact_here(kernels):
    rng = np.random.default_rng(3)
    for i in range(12):
        h, w = (int(x) for x in rng.integers(1, 2200, 2))
        a = smooth_img(h, w, [0, 3, 4][i % 3], seed=i)
        assert assert_views_agree(a, MODES[i % 5], threads=1 + i % 2) == 0.0
    page = P.sample_page()
    for family, mode in [("ocr1", m) for m in MODES] + [("ocr2", m) for m in MODES_V2]:
        p = P.preprocess(page, mode, engine="python", family=family)  # other dtypes: cast from float32
        for dt in (torch.float32, torch.bfloat16, torch.float16):
            c = P.preprocess(page, mode, dtype=dt, engine="cpp", family=family)
            assert torch.equal(c.global_view, p.global_view.to(dt))
            assert (c.tiles is None) == (p.tiles is None)
            assert (c.tiles is None) or torch.equal(c.tiles, p.tiles.to(dt))


def test_kernel_sets_identical():
    if len(KERNELS) < 2:
        pytest.skip("no AVX2 on this CPU")
    page = P.sample_page()
    grey = page[..., 0]
    outs = {}
    for k in KERNELS:
        with kernel_set(k):
            outs[k] = [P.preprocess(x, "gundam", engine="cpp") for x in (page, grey, page[:, :700])]
    for a, b in zip(outs["avx2"], outs["scalar"]):
        assert torch.equal(a.global_view, b.global_view) and torch.equal(a.tiles, b.tiles)


# ------------------------------------------------------------------------------------------------
# Threads, batching, buffers


def test_threads_and_batch_give_identical_results():
    imgs = [smooth_img(700, 1300, 3, 1), smooth_img(90, 50, 0, 2), smooth_img(2100, 800, 4, 3),
            smooth_img(640, 641, 3, 4, np.uint16), smooth_img(1, 3000, 3, 5)]
    ms = ["gundam", "small", "gundam", "large", "gundam"]
    ref = [P.preprocess(a, m, engine="python") for a, m in zip(imgs, ms)]
    for threads in (1, 2, 3, 8):
        res = P.preprocess_batch(imgs, ms, engine="cpp", threads=threads)
        for r, e in zip(res, ref):
            assert torch.equal(r.global_view, e.global_view)
            assert (r.tiles is None) == (e.tiles is None)
            if r.tiles is not None:
                assert torch.equal(r.tiles, e.tiles)


def test_concurrent_python_threads():
    """The GIL is released; two Python threads may run the engine at once."""
    page = P.sample_page()
    expect = P.preprocess(page, "gundam", engine="cpp", threads=1)
    errors = []

    def work():
        try:
            for _ in range(3):
                v = P.preprocess(page, "gundam", engine="cpp", threads=2)
                assert torch.equal(v.tiles, expect.tiles) and torch.equal(v.global_view, expect.global_view)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


def test_every_output_element_written(nan_empty):
    a = smooth_img(1000, 1500, 3, 6)
    g, t = nan_empty((3, 1024, 1024), device="cpu"), nan_empty((6, 3, 640, 640), device="cpu")
    grid = C.preprocess_into([a], ["gundam"], 6, [g], [t], None, 3)
    assert tuple(grid[0]) == modes.choose_tile_grid(1500, 1000, 6) == (3, 2)
    assert not torch.isnan(g).any() and not torch.isnan(t).any()


def test_every_output_element_written_v2(nan_empty):
    a = smooth_img(1000, 1500, 3, 6)
    g, t = nan_empty((3, 1024, 1024), device="cpu"), nan_empty((6, 3, 768, 768), device="cpu")
    grid = C.preprocess_into([a], ["gundam"], None, [g], [t], None, 3, family="ocr2")
    assert tuple(grid[0]) == modes.choose_tile_grid(1500, 1000, family="ocr2") == (3, 2)
    assert not torch.isnan(g).any() and not torch.isnan(t).any()


def test_numpy_output_buffers():
    a = smooth_img(300, 500, 3, 7)
    ref = P.preprocess(a, "base", engine="python").global_view
    g32 = np.empty((3, 1024, 1024), np.float32)
    g16 = np.empty((3, 1024, 1024), np.float16)
    C.preprocess_into([a, a], ["base", "base"], 9, [g32, g16], [None, None])
    assert torch.equal(torch.from_numpy(g32), ref)
    assert torch.equal(torch.from_numpy(g16), ref.half())


def test_pinned_buffer_reuse():
    if not torch.cuda.is_available():
        buf = torch.empty(P.views_numel(1240, 1754, "gundam"))
    else:  # pragma: no cover - GPU machines
        buf = torch.empty(P.views_numel(1240, 1754, "gundam"), pin_memory=True)
    page = P.sample_page()
    v1 = P.preprocess_batch([page], "gundam", engine="cpp", out=buf)[0]
    ptr = v1.global_view.data_ptr()
    v2 = P.preprocess_batch([page[::-1]], "gundam", engine="cpp", out=buf)[0]
    assert v2.global_view.data_ptr() == ptr == buf.data_ptr()


A = np.zeros((20, 30, 3), np.uint8)
G = torch.empty(3, 1024, 1024)


@pytest.mark.parametrize("args,exc,msg", [
    (([A], ["base"], 9, [torch.empty(3, 1024, 1024, dtype=torch.float64)], [None]), TypeError, "float64"),
    (([A], ["base"], 9, [torch.empty(3, 1024, 1024, dtype=torch.int32)], [None]), TypeError, "int32"),
    (([A], ["base"], 9, [np.empty((3, 1024, 1024), np.float64)], [None]), TypeError, "float64"),
    (([A], ["base"], 9, [torch.empty(1024, 1024)], [None]), ValueError, r"expected shape \(3, 1024, 1024\)"),
    (([A], ["base"], 9, [torch.empty(3, 1024, 1000)], [None]), ValueError, r"got \(3, 1024, 1000\)"),
    (([A], ["base"], 9, [torch.empty(1024, 1024, 3).permute(2, 0, 1)], [None]), ValueError, "contiguous"),
    (([A], ["base"], 9, [np.empty((3, 1024, 2048), np.float32)[:, :, ::2]], [None]), ValueError, "contiguous"),
    (([A], ["base"], 9, ["buffer"], [None]), TypeError, "numpy array or a torch tensor"),
    (([A], ["base"], 9, [G], [torch.empty(2, 3, 640, 640)]), ValueError, "no tiles"),
    (([np.zeros((700, 1400, 3), np.uint8)], ["gundam"], 9, [G], [None]), ValueError, "no buffer"),
    (([np.zeros((700, 1400, 3), np.uint8)], ["gundam"], 9, [G], [torch.empty(3, 3, 640, 640)]), ValueError,
     r"expected shape \(2, 3, 640, 640\)"),
    (([A.astype(np.float32)], ["base"], 9, [G], [None]), TypeError, "float32"),
    (([A.astype(np.int16)], ["base"], 9, [G], [None]), TypeError, "int16"),
    (([np.zeros((2, 2, 2, 3), np.uint8)], ["base"], 9, [G], [None]), ValueError, r"\(2, 2, 2, 3\)"),
    (([np.zeros((4, 4, 2), np.uint8)], ["base"], 9, [G], [None]), ValueError, "channels"),
    (([np.zeros((4, 0, 3), np.uint8)], ["base"], 9, [G], [None]), ValueError, "zero-size"),
    (([A.tolist()], ["base"], 9, [G], [None]), TypeError, "numpy array"),
    (([A], ["giant"], 9, [G], [None]), ValueError, "unknown mode"),
    (([A], ["base"], 1, [G], [None]), ValueError, "max_tiles"),
    (([A], ["tiny"], None, [G], [None], None, 1, "ocr2"), ValueError,
     "unknown mode 'tiny' for model family 'ocr2': choose one of gundam, base"),
    (([A], ["base"], None, [G], [None], None, 1, "ocr3"), ValueError, "unknown model family 'ocr3'"),
    (([A], ["base"], 1, [G], [None], None, 1, "ocr2"), ValueError, "max_tiles must be >= 2"),
    (([A], ["base"], 2.5, [G], [None]), TypeError, "max_tiles must be an integer or None"),
    (([A], ["base"], 10**30, [G], [None]), ValueError, "max_tiles must be <= 4096"),
    (([np.zeros((700, 1400, 3), np.uint8)], ["gundam"], None, [G], [torch.empty(2, 3, 640, 640)], None, 1,
      "ocr2"), ValueError, r"expected shape \(2, 3, 768, 768\)"),
    (([A, A], ["base"], 9, [G], [None]), ValueError, "same length"),
])
def test_bad_buffers_and_inputs_raise(args, exc, msg):
    with pytest.raises(exc, match=msg):
        C.preprocess_into(*args)


def test_read_only_and_bad_threads():
    ro = np.zeros((3, 1024, 1024), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        C.preprocess_into([A], ["base"], 9, [ro], [None])
    with pytest.raises(ValueError, match="threads"):
        C.preprocess_into([A], ["base"], 9, [G], [None], None, 0)
    with pytest.raises(ValueError, match="invalid grid"):
        C.preprocess_into([np.zeros((700, 1400, 3), np.uint8)], ["gundam"], 9, [G],
                          [torch.empty(20, 3, 640, 640)], [(5, 4)])
