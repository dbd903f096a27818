"""OCR-2 checkpoints in both key schemes (upstream and transformers-native), family detection, errors."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from deepencoder.config import DeepEncoderConfig, DeepEncoderV2Config
from deepencoder.encoder import DeepEncoder, resolve_family
from deepencoder.models import DeepEncoderReference, DeepEncoderV2Reference
from deepencoder.weights import (
    NATIVE_OCR2_RENAMES,
    CheckpointError,
    checkpoint_family,
    checkpoint_scheme,
    detect_scheme,
    init_random_,
    load_checkpoint,
    load_encoder_state_dict,
    native_to_upstream,
    save_checkpoint,
    upstream_to_native,
)


def small_v2(seed):
    return init_random_(DeepEncoderV2Reference(DeepEncoderV2Config.small_test()), seed).eval()


def lm_tensors():
    g = torch.Generator().manual_seed(5)
    return {"model.language_model.layers.0.self_attn.q_proj.weight": torch.randn(32, 32, generator=g),
            "model.layers.0.mlp.gate_proj.weight": torch.randn(32, 32, generator=g),
            "lm_head.weight": torch.randn(50, 32, generator=g)}


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_rename_table_round_trips_every_real_key():
    keys = list(DeepEncoderV2Reference().state_dict())
    native = [upstream_to_native(k) for k in keys]
    assert None not in native
    assert len(set(native)) == len(keys)
    assert [native_to_upstream(k) for k in native] == keys
    # spot checks against transformers' deepseek_ocr2 names
    want = {
        "sam_model.patch_embed.proj.weight": "vision_tower.sam_encoder.patch_embed.projection.weight",
        "sam_model.blocks.11.norm2.bias": "vision_tower.sam_encoder.layers.11.layer_norm2.bias",
        "sam_model.blocks.3.attn.rel_pos_h": "vision_tower.sam_encoder.layers.3.attn.rel_pos_h",
        "sam_model.neck.3.weight": "vision_tower.sam_encoder.neck.layer_norm2.weight",
        "sam_model.net_3.weight": "vision_tower.sam_encoder.proj.conv2.weight",
        "qwen2_model.model.model.layers.23.mlp.up_proj.weight": "vision_tower.vision_encoder.layers.23.mlp.up_proj.weight",
        "qwen2_model.model.model.norm.weight": "vision_tower.vision_encoder.norm.weight",
        "qwen2_model.query_1024.weight": "vision_tower.query_1024_resolution.weight",
        "projector.layers.bias": "multi_modal_projector.bias",
        "view_seperator": "view_separator",
    }
    for up, nat in want.items():
        assert upstream_to_native(up) == nat and native_to_upstream(nat) == up
    assert len(NATIVE_OCR2_RENAMES) == 17


@pytest.mark.parametrize("scheme", ["ocr2", "ocr2-hf"])
@pytest.mark.parametrize("layout", ["file", "index", "folder"])
def test_round_trip_both_schemes(tmp_path, scheme, layout):
    src, dst = small_v2(1), small_v2(2)
    if layout == "file":
        path = str(tmp_path / "model.safetensors")
        save_checkpoint(src, path, extra=lm_tensors(), scheme=scheme)
    else:
        path = str(tmp_path / "model.safetensors.index.json")
        save_checkpoint(src, path, extra=lm_tensors(), shard_size=40, scheme=scheme)
        if layout == "folder":
            path = str(tmp_path)
    assert checkpoint_scheme(path) == scheme and checkpoint_family(path) == "ocr2"
    sd = load_encoder_state_dict(path)
    assert set(sd) == set(dst.state_dict())  # renamed to upstream names; LM tensors never read
    load_checkpoint(dst, path)
    assert_same_weights(src, dst)


def test_native_file_keys_are_native(tmp_path):
    path = str(tmp_path / "m.safetensors")
    save_checkpoint(small_v2(0), path, scheme="ocr2-hf")
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
    assert "model.vision_tower.vision_encoder.layers.0.self_attn.q_proj.weight" in keys
    assert "model.view_separator" in keys and "model.multi_modal_projector.weight" in keys
    assert not any("qwen2_model" in k or "sam_model" in k for k in keys)


def test_only_encoder_shards_are_opened(tmp_path):
    src = small_v2(3)
    index = str(tmp_path / "model.safetensors.index.json")
    save_file({"model.language_model.embed.weight": torch.randn(4, 4)}, str(tmp_path / "lm-only.safetensors"))
    save_checkpoint(src, index, shard_size=1000, scheme="ocr2-hf")
    with open(index) as f:
        idx = json.load(f)
    idx["weight_map"]["model.language_model.embed.weight"] = "lm-only.safetensors"
    with open(index, "w") as f:
        json.dump(idx, f)
    os.remove(str(tmp_path / "lm-only.safetensors"))  # never opened: loading must still work
    dst = small_v2(4)
    load_checkpoint(dst, index)
    assert_same_weights(src, dst)


@pytest.mark.parametrize("scheme", ["ocr2", "ocr2-hf"])
def test_missing_and_misshaped_keys_are_listed(tmp_path, scheme):
    src = small_v2(1)
    path = str(tmp_path / "m.safetensors")
    save_checkpoint(src, path, scheme=scheme)
    with safe_open(path, "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    q = "model.qwen2_model.query_768.weight" if scheme == "ocr2" else "model.vision_tower.query_768_resolution.weight"
    k = ("model.qwen2_model.model.model.layers.1.self_attn.k_proj.bias" if scheme == "ocr2"
         else "model.vision_tower.vision_encoder.layers.1.self_attn.k_proj.bias")
    del t[q]
    t[k] = torch.zeros(7)
    save_file(t, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(small_v2(2), path)
    msg = str(e.value)
    assert "missing keys (1)" in msg and "qwen2_model.query_768.weight" in msg
    assert "wrongly shaped keys (1)" in msg and "(7,)" in msg


def test_family_detection_and_mismatch_errors(tmp_path):
    v1 = str(tmp_path / "v1.safetensors")
    v2 = str(tmp_path / "v2.safetensors")
    save_checkpoint(init_random_(DeepEncoderReference(DeepEncoderConfig.small_test()), 0), v1)
    save_checkpoint(small_v2(0), v2)
    assert checkpoint_family(v1) == "ocr1" and checkpoint_family(v2) == "ocr2"
    assert resolve_family(weights=v2) == "ocr2" and resolve_family(weights=v1) == "ocr1"
    with pytest.raises(CheckpointError, match=r"DeepSeek-OCR \(ocr1\) checkpoint.*--model ocr1"):
        resolve_family("ocr2", weights=v1)
    with pytest.raises(CheckpointError, match=r"DeepSeek-OCR 2 \(ocr2\) checkpoint"):
        load_checkpoint(init_random_(DeepEncoderReference(DeepEncoderConfig.small_test()), 0), v2)
    with pytest.raises(CheckpointError, match="neither"):
        detect_scheme(["model.foo.weight", "lm_head.weight"])
    with pytest.raises(ValueError, match="unknown model family"):
        resolve_family("ocr3")
    enc = DeepEncoder(config=DeepEncoderV2Config.small_test(), weights=v2, device="cpu", backend="reference")
    assert enc.family == "ocr2" and not enc.random_weights
