"""Checkpoint round trip with the real key names, sharding, LM tensors left unread, clear errors."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from deepencoder.config import DeepEncoderConfig
from deepencoder.reference import DeepEncoderReference
from deepencoder.weights import (
    CheckpointError,
    init_random_,
    load_checkpoint,
    load_encoder_state_dict,
    preflight_checkpoint,
    save_checkpoint,
)


def lm_tensors():
    g = torch.Generator().manual_seed(5)
    return {"model.layers.0.self_attn.q_proj.weight": torch.randn(64, 64, generator=g),
            "model.embed_tokens.weight": torch.randn(100, 64, generator=g),
            "lm_head.weight": torch.randn(100, 64, generator=g)}


def small(seed):
    return init_random_(DeepEncoderReference(DeepEncoderConfig.small_test()), seed).eval()


def test_round_trip_single_file(tmp_path):
    src, dst = small(1), small(2)
    path = str(tmp_path / "model.safetensors")
    extra = lm_tensors()
    extra["model.vision_model.embeddings.position_ids"] = torch.arange(257)[None]  # some saves carry it
    save_checkpoint(src, path, extra=extra)
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
    assert "model.sam_model.blocks.0.attn.rel_pos_h" in keys and "lm_head.weight" in keys
    sd = load_encoder_state_dict(path)
    assert not any(k.startswith(("layers", "embed_tokens", "lm_head", "model.")) for k in sd)  # LM never read
    load_checkpoint(dst, path)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_round_trip_sharded_index(tmp_path):
    src, dst = small(3), small(4)
    idx = str(tmp_path / "model.safetensors.index.json")
    files = save_checkpoint(src, idx, extra=lm_tensors(), shard_size=20)
    assert len(files) > 3
    # a shard that only holds LM tensors is never opened
    with open(idx) as f:
        wm = json.load(f)["weight_map"]
    lm_only = str(tmp_path / "model-lm-only.safetensors")
    save_file({"model.layers.9.mlp.weight": torch.randn(4, 4)}, lm_only)
    wm["model.layers.9.mlp.weight"] = "model-lm-only.safetensors"
    with open(idx, "w") as f:
        json.dump({"weight_map": wm}, f)
    os.remove(lm_only)  # if the loader opened it, it would fail
    load_checkpoint(dst, str(tmp_path))  # folder form finds the index
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k


def test_missing_and_wrong_shape_errors(tmp_path):
    src = small(1)
    sd = {"model." + k: v.clone() for k, v in src.state_dict().items()}
    del sd["model.sam_model.blocks.1.attn.rel_pos_h"]
    sd["model.projector.layers.weight"] = torch.zeros(7, 7)
    sd["model.sam_model.blocks.99.norm1.weight"] = torch.zeros(3)
    path = str(tmp_path / "bad.safetensors")
    save_file(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(small(2), path)
    msg = str(e.value)
    assert "missing keys (1)" in msg and "sam_model.blocks.1.attn.rel_pos_h" in msg
    assert "unexpected keys (1)" in msg and "sam_model.blocks.99.norm1.weight" in msg
    assert "wrongly shaped keys (1)" in msg and "projector.layers.weight: checkpoint (7, 7)" in msg


def test_real_config_key_names_and_shapes(tmp_path):
    """The real model has the DeepSeek-OCR key names and shapes listed in SPEC.md."""
    cfg = DeepEncoderConfig.deepseek_ocr()
    m = DeepEncoderReference(cfg)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["sam_model.pos_embed"] == (1, 64, 64, 768)
    assert shapes["sam_model.neck.0.weight"] == (256, 768, 1, 1)
    assert shapes["sam_model.net_3.weight"] == (1024, 512, 3, 3)
    assert shapes["vision_model.embeddings.position_embedding.weight"] == (257, 1024)
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert shapes["vision_model.transformer.layers.0.self_attn.qkv_proj.weight"] == (3072, 1024)
    assert shapes["projector.layers.weight"] == (1280, 2048)
    assert len([k for k in shapes if k.startswith("sam_model.blocks.")]) == 12 * 14
    assert len([k for k in shapes if k.startswith("vision_model.transformer.layers.")]) == 24 * 12


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(small(1), str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="corrupt.safetensors: not a safetensors file"):
        load_checkpoint(small(1), str(bad))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        load_checkpoint(small(1), str(empty_dir))


def _saved(tmp_path, edit):
    path = str(tmp_path / "model.safetensors")
    save_checkpoint(small(1), path)
    with safe_open(path, "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    edit(t)
    save_file(t, path)
    return path


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_at_load(tmp_path, bad):
    def edit(t):
        t["model.sam_model.blocks.0.attn.qkv.weight"][1, 2] = bad

    path = _saved(tmp_path, edit)
    dst = small(2)
    with pytest.raises(CheckpointError, match=r"sam_model.blocks.0.attn.qkv.weight holds 1 non-finite"):
        load_checkpoint(dst, path)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_integer_weights_are_refused_naming_the_key(tmp_path, dtype):
    def edit(t):
        t["model.projector.layers.weight"] = t["model.projector.layers.weight"].to(dtype)

    path = _saved(tmp_path, edit)
    with pytest.raises(CheckpointError, match=r"projector.layers.weight has dtype .*must be floating point"):
        load_checkpoint(small(2), path)
    with torch.device("meta"):
        meta_model = DeepEncoderReference(DeepEncoderConfig.small_test())
    with pytest.raises(CheckpointError, match=r"model.projector.layers.weight has dtype"):
        preflight_checkpoint(path, meta_model)  # headers only, before any real model exists


def test_preflight_reads_headers_only_and_finds_mismatches(tmp_path, monkeypatch):
    path = str(tmp_path / "model.safetensors")
    save_checkpoint(small(1), path)
    with torch.device("meta"):
        meta_model = DeepEncoderReference(DeepEncoderConfig.small_test())
    import safetensors

    def no_data(*a, **k):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(safetensors.safe_open, "get_tensor", no_data, raising=False)
    preflight_checkpoint(path, meta_model)  # a good checkpoint passes
    with safe_open(path, "pt") as f:
        t = {k: f.get_slice(k)[:] for k in f.keys()}
    t.pop("model.projector.layers.bias")
    t["model.sam_model.neck.0.weight"] = t["model.sam_model.neck.0.weight"][:1]
    save_file(t, path)
    with pytest.raises(CheckpointError) as e:
        preflight_checkpoint(path, meta_model)
    assert "projector.layers.bias" in str(e.value) and "sam_model.neck.0.weight" in str(e.value)


@pytest.mark.parametrize("content,match", [
    ({"weight_map": 5}, "'weight_map' must be an object"),
    ({"weight_map": {"model.projector.layers.weight": 3}}, "is not a shard file name"),
    ({"weight_map": {"model.projector.layers.weight": "../../etc/x.safetensors"}}, "is not a shard file name"),
    ([1, 2], "not a safetensors index"),
    ({"metadata": {}}, "not a safetensors index"),
    ("{oops", "not a safetensors index json"),
])
def test_malformed_index_is_a_checkpoint_error(tmp_path, content, match):
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(small(1), str(idx))


def test_pickled_pt_file_is_refused_with_a_hint(tmp_path):
    pt = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(3)}, str(pt))
    with pytest.raises(CheckpointError, match="not a safetensors file .*convert to safetensors"):
        load_checkpoint(small(1), str(pt))
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"model.projector.layers.weight": "missing.safetensors"}}))
    with pytest.raises(CheckpointError, match="checkpoint file is missing: .*missing.safetensors"):
        load_checkpoint(small(1), str(idx))
