"""The deepencoder CLI: encode end to end, tables, warnings, outputs, and clear errors."""

import os

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from deepencoder.cli import main
from deepencoder.modes import vision_token_count

SMALL = ["--config", "small-test", "--backend", "reference", "--device", "cpu"]


def page(path, w=900, h=700, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_encode_files_and_folder(tmp_path, capsys):
    d = tmp_path / "pages"
    d.mkdir()
    a = page(d / "a.png", 900, 700, 1)
    page(d / "b.png", 500, 400, 2)
    (d / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc = main(["encode", a, str(d), "--mode", "gundam", "--out", str(out)] + SMALL)
    assert rc == 0
    cap = capsys.readouterr()
    assert "RANDOM" in cap.err and "MEANINGLESS" in cap.err  # random weights are said plainly
    assert "LLM tokens" in cap.out and "gundam" in cap.out
    files = sorted(os.listdir(out))
    assert files == ["a.safetensors", "b.safetensors"]  # a.png named directly and through its folder: once
    with safe_open(str(out / "a.safetensors"), "pt") as f:
        t = f.get_tensor("tokens")
        meta = f.metadata()
    assert t.shape == (vision_token_count(900, 700, "gundam"), 96)
    assert meta["random_weights"] == "True" and meta["mode"] == "gundam"
    assert np.isfinite(t.numpy()).all()


def test_never_overwrites_without_force(tmp_path, capsys):
    a = page(tmp_path / "a.png", 300, 200)
    out = tmp_path / "out"
    assert main(["encode", a, "--mode", "tiny", "--out", str(out)] + SMALL) == 0
    target = out / "a.safetensors"
    before = target.read_bytes()
    os.utime(target, (1, 1))
    capsys.readouterr()
    # the same request again: the output is up to date, kept as is (a rerun continues, see test_bad_input)
    assert main(["encode", a, "--mode", "tiny", "--out", str(out)] + SMALL) == 0
    assert "up to date" in capsys.readouterr().out
    assert target.read_bytes() == before and os.stat(target).st_mtime == 1
    # another request for the same output: refused, nothing touched
    assert main(["encode", a, "--mode", "small", "--out", str(out)] + SMALL) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "mode='tiny'" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == before and os.stat(target).st_mtime == 1
    # the input changed: refused too (its hash is in the metadata)
    page(tmp_path / "a.png", 300, 200, seed=9)
    assert main(["encode", a, "--mode", "tiny", "--out", str(out)] + SMALL) == 2
    assert "source_sha256" in capsys.readouterr().err and os.stat(target).st_mtime == 1
    assert main(["encode", a, "--mode", "tiny", "--out", str(out), "--force"] + SMALL) == 0
    assert os.stat(target).st_mtime != 1


@pytest.mark.parametrize("case", ["missing", "empty_folder", "corrupt", "empty_file", "pdf"])
def test_clear_errors(tmp_path, capsys, case):
    if case == "missing":
        arg, expect = str(tmp_path / "nope.png"), "not found"
    elif case == "empty_folder":
        (tmp_path / "e").mkdir()
        arg, expect = str(tmp_path / "e"), "holds no images"
    elif case == "corrupt":
        (tmp_path / "c.png").write_bytes(b"\x89PNG garbage")
        arg, expect = str(tmp_path / "c.png"), "c.png"
    elif case == "empty_file":
        (tmp_path / "z.png").write_bytes(b"")
        arg, expect = str(tmp_path / "z.png"), "z.png"
    else:
        (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4")
        arg, expect = str(tmp_path / "doc.pdf"), "PDF"
    rc = main(["encode", arg, "--mode", "tiny", "--out", str(tmp_path / "o")] + SMALL)
    assert rc == 2
    err = capsys.readouterr().err
    assert "error" in err and expect in err


def test_unknown_mode_is_rejected(capsys):
    with pytest.raises(SystemExit) as e:
        main(["encode", "x.png", "--mode", "huge"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_fast_backend_without_cuda_or_interpreter_says_so(monkeypatch):
    from deepencoder.config import DeepEncoderConfig
    from deepencoder.encoder import DeepEncoder

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        DeepEncoder(DeepEncoderConfig.small_test(), backend="fast", device="cpu")


def test_demo_small(tmp_path, capsys):
    """Both families side by side: ocr1 tiny + gundam (2x3 tiles: 903) and ocr2 gundam (2x3 crops: 6*144+257)."""
    rc = main(["demo", "--out", str(tmp_path / "demo"), "--modes", "tiny,gundam"] + SMALL)
    assert rc == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("sample_page.png")]
    got = {(r[1], r[2]): int(r[6]) for r in rows}
    assert got == {("ocr1", "tiny"): 73, ("ocr1", "gundam"): 903, ("ocr2", "gundam"): 6 * 144 + 257}
    assert (tmp_path / "demo" / "sample_page.png").exists()
    for name in ("ocr1-tiny", "ocr1-gundam", "ocr2-gundam"):
        with safe_open(str(tmp_path / "demo" / f"sample_page.{name}.safetensors"), "pt") as f:
            assert f.metadata()["family"] == name.split("-")[0]


def test_encode_model_ocr2_records_family(tmp_path, capsys):
    a = page(tmp_path / "wide.png", 1920, 1080, 3)  # ocr2: 2x1 crops -> 2*144 + 257 tokens
    out = tmp_path / "out"
    assert main(["encode", a, "--model", "ocr2", "--out", str(out)] + SMALL) == 0
    with safe_open(str(out / "wide.safetensors"), "pt") as f:
        meta = f.metadata()
        tokens = f.get_tensor("tokens")
    assert meta["family"] == "ocr2" and meta["mode"] == "gundam" and meta["grid"] == "2x1"
    assert tokens.shape[0] == 2 * 144 + 257 == vision_token_count(1920, 1080, "gundam", family="ocr2")
    assert "ocr2" in capsys.readouterr().out


def test_model_flag_against_checkpoint_of_other_family(tmp_path, capsys):
    from deepencoder.config import DeepEncoderConfig
    from deepencoder.models import DeepEncoderReference
    from deepencoder.weights import init_random_, save_checkpoint

    ck = str(tmp_path / "v1.safetensors")
    save_checkpoint(init_random_(DeepEncoderReference(DeepEncoderConfig.small_test()), 0), ck)
    a = page(tmp_path / "p.png")
    rc = main(["encode", a, "--model", "ocr2", "--weights", ck, "--out", str(tmp_path / "o")] + SMALL)
    err = capsys.readouterr().err
    assert rc == 2 and "DeepSeek-OCR (ocr1) checkpoint" in err and "--model ocr1" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    # the mode must belong to the family
    rc = main(["encode", a, "--model", "ocr2", "--mode", "tiny", "--out", str(tmp_path / "o")] + SMALL)
    assert rc == 2 and "tiny" in capsys.readouterr().err
