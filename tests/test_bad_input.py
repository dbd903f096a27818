"""Bad and odd input on the user-facing surface: one-line errors before the model build, nothing lost or
overwritten, clean interruption and resume, the per-input failure policy, and no silent wrong output
from the Python API (issue 15). The small config keeps every model here tiny."""

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from deepencoder.cli import main, output_paths
from deepencoder.config import DeepEncoderConfig
from deepencoder.encoder import DeepEncoder, RandomWeightsWarning
from deepencoder.reference import DeepEncoderReference
from deepencoder.weights import init_random_, save_checkpoint

SMALL = ["--config", "small-test", "--backend", "reference", "--device", "cpu"]


def page(path, w=320, h=240, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder`` (hidden ones too)."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


@pytest.fixture
def no_model_build(monkeypatch):
    """Fails the test if a DeepEncoder is built: the error must come before the (slow) build."""
    def boom(self, *a, **k):
        raise AssertionError("the model was built before the error was found")

    monkeypatch.setattr(DeepEncoder, "__init__", boom)


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "error" in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# ---------------------------------------------------------------------------------------------- names
def test_output_names_are_unique_by_construction(tmp_path, capsys):
    a = page(tmp_path / "a" / "page.png", seed=1)
    b = page(tmp_path / "b" / "page.png", seed=2)
    c = page(tmp_path / "c" / "page-1.png", seed=3)
    out = tmp_path / "o"
    assert main(["encode", a, b, c, "--mode", "tiny", "--out", str(out)] + SMALL) == 0
    files = sorted(snapshot(out))
    assert files == ["a/page.safetensors", "b/page.safetensors", "c/page-1.safetensors"]
    sources = set()
    for f in files:
        with safe_open(str(out / f), "pt") as g:
            sources.add(g.metadata()["source"])
    assert sources == {a, b, c}  # each input's tokens in its own file
    # same stem, two extensions in one folder: every name of the run keeps its extension
    names = output_paths(["d/p.png", "d/p.jpg", "d/q.png"], "o")
    assert names == [os.path.join("o", n) for n in ("p.png.safetensors", "p.jpg.safetensors", "q.png.safetensors")]
    # names differing only in case would be one file on macOS / Windows
    names = output_paths(["d/Page.png", "d/page.jpg"], "o")
    assert len({n.casefold() for n in names}) == 2


# ---------------------------------------------------------------------------------------------- interruption
def test_interrupted_encode_keeps_outputs_and_rerun_continues(tmp_path, capsys, monkeypatch):
    inputs = [page(tmp_path / "in" / f"p{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "o"
    calls = []
    real = DeepEncoder.encode

    def interrupting(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(DeepEncoder, "encode", interrupting)
    assert main(["encode", *inputs, "--mode", "tiny", "--out", str(out)] + SMALL) == 130
    err = capsys.readouterr().err
    tail = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert len(tail) == 1 and "1 of 3" in tail[0] and "Traceback" not in err
    assert sorted(snapshot(out)) == ["p0.safetensors"]  # the finished one kept, nothing partial
    kept = (out / "p0.safetensors").read_bytes()
    calls.clear()
    monkeypatch.setattr(DeepEncoder, "encode", real)
    assert main(["encode", *inputs, "--mode", "tiny", "--out", str(out)] + SMALL) == 0
    cap = capsys.readouterr()
    assert "1 of 3 output(s) already up to date" in cap.err and "wrote 2 file(s)" in cap.out
    assert sorted(snapshot(out)) == ["p0.safetensors", "p1.safetensors", "p2.safetensors"]
    assert (out / "p0.safetensors").read_bytes() == kept  # continued, not redone


def test_interrupt_while_writing_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    a = page(tmp_path / "a.png")
    out = tmp_path / "o"

    def half_write(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", half_write)
    assert main(["encode", a, "--mode", "tiny", "--out", str(out)] + SMALL) == 130
    assert snapshot(out) == {}  # no a.safetensors, no hidden temporary
    assert "interrupted" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- failure policy
def test_bad_input_mid_batch_encodes_the_rest_and_exits_2(tmp_path, capsys):
    page(tmp_path / "in" / "a.png", seed=1)
    bad = tmp_path / "in" / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    trunc = tmp_path / "in" / "c.png"  # a valid header (passes the up-front check), truncated data
    page(trunc, 400, 300, seed=5)
    trunc.write_bytes(trunc.read_bytes()[:200])
    page(tmp_path / "in" / "d.png", seed=2)
    out = tmp_path / "o"
    rc = main(["encode", str(tmp_path / "in"), "--mode", "tiny", "--out", str(out)] + SMALL)
    cap = capsys.readouterr()
    assert rc == 2
    assert sorted(snapshot(out)) == ["a.safetensors", "d.safetensors"]
    errs = [ln for ln in cap.err.splitlines() if "error" in ln]
    assert any("b.png" in ln and "not a readable image" in ln for ln in errs)
    assert any("c.png" in ln for ln in errs[:-1])  # reported when it failed, with its reason
    assert "2 of 4 input(s) failed" in errs[-1] and "Traceback" not in cap.err
    assert "wrote 2 file(s)" in cap.out


# ---------------------------------------------------------------------------------------------- demo
def test_demo_validates_first_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    mine = out / "sample_page.png"
    mine.write_bytes(b"my own file")
    assert main(["demo", "--out", str(out), "--modes", "tiny,huge"] + SMALL) == 2
    one_line_error(capsys, "huge")
    assert main(["demo", "--out", str(out), "--modes", "tiny"] + SMALL) == 2
    one_line_error(capsys, "--force", "sample_page.png")
    assert mine.read_bytes() == b"my own file" and sorted(os.listdir(out)) == ["sample_page.png"]
    assert main(["demo", "--out", str(out), "--modes", "tiny", "--force"] + SMALL) == 0
    assert mine.read_bytes() != b"my own file"


# ---------------------------------------------------------------------------------------------- one-line errors
def _ckpt(tmp_path, edit=None, name="model.safetensors"):
    model = init_random_(DeepEncoderReference(DeepEncoderConfig.small_test()), 1)
    path = str(tmp_path / name)
    save_checkpoint(model, path)
    if edit:
        with safe_open(path, "pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}
        edit(t)
        save_file(t, path)
    return path


def _int_tensor(t):
    k = "model.projector.layers.weight"
    t[k] = (t[k] * 100).to(torch.int32)


def _nan_tensor(t):
    t["model.projector.layers.bias"][3] = float("nan")


@pytest.mark.parametrize("case", ["max_tiles_0", "max_tiles_huge", "device_gpu_missing", "fast_cpu", "graphs_on_cpu",
                                  "out_is_file", "out_under_file", "read_only_out", "index_weight_map_5",
                                  "index_not_json", "pt_file", "missing_weights", "int_tensor", "wrong_shape",
                                  "pixel_bomb"])
def test_one_line_error_before_model_build(tmp_path, capsys, monkeypatch, case):
    a = page(tmp_path / "a.png")
    out = str(tmp_path / "o")
    extra, needles = [], []
    if case == "max_tiles_0":
        extra, needles = ["--max-tiles", "0"], ["--max-tiles 0"]
    elif case == "max_tiles_huge":
        extra, needles = ["--max-tiles", "100"], ["over the limit of 36", "DEEPENCODER_MAX_TILES_LIMIT"]
    elif case == "device_gpu_missing":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        extra, needles = ["--device", "cuda"], ["--device cuda", "not available"]
    elif case == "fast_cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        extra, needles = ["--backend", "fast"], ["--backend fast"]
    elif case == "graphs_on_cpu":
        extra, needles = ["--cuda-graphs"], ["--cuda-graphs", "CUDA"]
    elif case == "out_is_file":
        open(out, "w").close()
        needles = ["--out", "not a folder"]
    elif case == "out_under_file":
        open(out, "w").close()
        out, needles = os.path.join(out, "sub"), ["--out", "cannot write"]
    elif case == "read_only_out":
        import tempfile

        def denied(*a, **k):  # what a read-only folder does to mkstemp (also when the tests run as root)
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", denied)
        needles = ["--out", "Permission denied"]
    elif case == "index_weight_map_5":
        idx = tmp_path / "model.safetensors.index.json"
        idx.write_text(json.dumps({"weight_map": 5}))
        extra, needles = ["--weights", str(idx)], ["weight_map", "int"]
    elif case == "index_not_json":
        idx = tmp_path / "x.json"
        idx.write_text("{oops")
        extra, needles = ["--weights", str(idx)], ["x.json", "not a safetensors index"]
    elif case == "pt_file":
        pt = tmp_path / "model.pt"
        torch.save({"w": torch.ones(2)}, str(pt))
        extra, needles = ["--weights", str(pt)], ["model.pt", "not a safetensors file", ".pt"]
    elif case == "missing_weights":
        extra, needles = ["--weights", str(tmp_path / "nope")], ["not found"]
    elif case == "int_tensor":
        extra, needles = ["--weights", _ckpt(tmp_path, _int_tensor)], ["projector.layers.weight", "I32"]
    elif case == "wrong_shape":
        def edit(t):
            t["model.projector.layers.weight"] = torch.zeros(3, 3)
        extra, needles = ["--weights", _ckpt(tmp_path, edit)], ["wrongly shaped", "projector.layers.weight"]
    else:
        monkeypatch.setenv("DEEPENCODER_MAX_IMAGE_PIXELS", "1000")
        needles = ["a.png", "over the limit of 1,000", "DEEPENCODER_MAX_IMAGE_PIXELS"]
    with monkeypatch.context() as m:
        m.setattr(DeepEncoder, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model built")))
        rc = main(["encode", a, "--mode", "tiny", "--out", out] + SMALL + extra)
    assert rc == 2
    one_line_error(capsys, *needles)
    if case not in ("out_is_file", "out_under_file", "read_only_out", "pixel_bomb"):
        assert not os.path.exists(out) or os.listdir(out) == []  # nothing written


def test_nan_checkpoint_is_one_line_error(tmp_path, capsys):
    path = _ckpt(tmp_path, _nan_tensor)
    rc = main(["encode", page(tmp_path / "a.png"), "--mode", "tiny", "--out", str(tmp_path / "o"),
               "--weights", path] + SMALL)
    assert rc == 2
    one_line_error(capsys, "projector.layers.bias", "non-finite")
    assert not os.listdir(tmp_path / "o")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="max-tiles"):
        main(["encode", page(tmp_path / "a.png"), "--max-tiles", "0", "--debug"] + SMALL)


def test_progress_lines_without_a_terminal(tmp_path, capsys):
    inputs = [page(tmp_path / f"p{i}.png", seed=i) for i in range(2)]
    assert main(["encode", *inputs, "--mode", "tiny", "--out", str(tmp_path / "o")] + SMALL) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    lines = [ln for ln in err.splitlines() if ln.startswith("encode: ")]
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"] and "\r" not in err
    assert err.count("MEANINGLESS") == 1  # the CLI's notice once, not also the API's warning


# ---------------------------------------------------------------------------------------------- Python API
@pytest.fixture(scope="module")
def enc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return DeepEncoder(DeepEncoderConfig.small_test(), device="cpu", backend="reference")


def test_api_warns_random_weights_once_per_construction():
    with pytest.warns(RandomWeightsWarning, match="MEANINGLESS") as rec:
        DeepEncoder(DeepEncoderConfig.small_test(), device="cpu", backend="reference")
    assert len([w for w in rec if w.category is RandomWeightsWarning]) == 1


def test_api_refuses_non_finite_pixels(enc):
    g = torch.Generator().manual_seed(0)
    pix = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    pix[1, 2, 5, 7] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        enc.encode_pixels(pix)
    pix[1, 2, 5, 7] = float("inf")
    with pytest.raises(ValueError, match="1 non-finite"):
        enc.encode_pixels(pix)


def test_api_refuses_non_finite_output():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        e = DeepEncoder(DeepEncoderConfig.small_test(), device="cpu", backend="reference")
    with torch.no_grad():
        e.model.projector.layers.bias[0] = float("inf")  # corrupted after loading
    pix = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with pytest.raises(FloatingPointError, match="non-finite token"):
        e.encode_pixels(pix)


def test_api_cuda_graphs_without_cuda_is_an_error():
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        DeepEncoder(DeepEncoderConfig.small_test(), device="cpu", cuda_graphs=True)
