"""deepencoder.patch on DeepSeek-OCR 2 models: transformers' native DeepseekOcr2ForConditionalGeneration (built
from a tiny config, random weights) and the upstream module tree (sam_model / qwen2_model / projector)."""

import copy

import pytest
import torch

from deepencoder.config import DeepEncoderV2Config
from deepencoder.models import DeepEncoderV2Reference, layout_tokens_v2
from deepencoder.patching import is_patched, patch, unpatch
from deepencoder.weights import init_random_, upstream_to_native

transformers = pytest.importorskip("transformers", minversion="5.10",
                                   reason="transformers >= 5.10 is a test extra (pip install -e .[test])")

CFG = DeepEncoderV2Config.small_test()


def tiny_native(seed=0):
    """transformers' DeepseekOcr2ForConditionalGeneration at the small test config's vision sizes, a 1-layer
    dense language model with a 300-token vocabulary; the vision weights are ours (seeded), loaded through
    the native names."""
    from transformers import DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration

    s, f = CFG.sam, CFG.flow
    sam = dict(hidden_size=s.embed_dim, num_hidden_layers=s.depth, num_attention_heads=s.num_heads,
               global_attn_indexes=list(s.global_attn_indexes), window_size=s.window_size,
               output_channels=s.out_chans, downsample_channels=[s.net2_chans, s.net3_chans],
               image_size=s.img_size, mlp_ratio=s.mlp_ratio)
    enc = dict(hidden_size=f.hidden_size, num_hidden_layers=f.num_layers, num_attention_heads=f.num_heads,
               num_key_value_heads=f.num_kv_heads, intermediate_size=f.intermediate_size, rms_norm_eps=f.rms_norm_eps,
               rope_parameters={"rope_theta": f.rope_theta, "rope_type": "default"}, max_position_embeddings=1024)
    text = dict(hidden_size=CFG.n_embed, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=64, vocab_size=300, head_dim=48, mlp_layer_types=["dense"], n_routed_experts=2,
                moe_intermediate_size=32)
    cfg = DeepseekOcr2Config(vision_config=dict(sam_config=sam, encoder_config=enc), text_config=text,
                             image_token_id=299)
    torch.manual_seed(seed)
    model = DeepseekOcr2ForConditionalGeneration(cfg).eval()
    ours = init_random_(DeepEncoderV2Reference(CFG), seed)
    sd = {"model." + upstream_to_native(k): v for k, v in ours.state_dict().items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected
    assert all(not k.startswith(("model.vision_tower", "model.multi_modal_projector", "model.view_separator"))
               for k in missing), missing
    return model, ours


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    glob = torch.rand(1, 3, 1024, 1024, generator=g) * 2 - 1
    local = torch.rand(1, 3, 768, 768, generator=g) * 2 - 1
    n_img = 144 + 257
    ids = torch.cat([torch.tensor([[1, 5, 7]]), torch.full((1, n_img), 299), torch.tensor([[9, 11]])], dim=1)
    return glob, local, ids


def features_and_logits(model, glob, local, ids):
    with torch.no_grad():
        feats = model.model.get_image_features(glob, pixel_values_local=local, num_local_patches=[1]).pooler_output
        logits = model(input_ids=ids, pixel_values=glob, pixel_values_local=local, num_local_patches=[1]).logits
    return feats[0], logits


@pytest.mark.parametrize("backend,op_backend", [("reference", "auto"), ("fast", "torch")],
                         ids=["reference", "fast-torch-ops"])
def test_patch_transformers_native_model(backend, op_backend):
    model, ours = tiny_native()
    glob, local, ids = inputs()
    feats0, logits0 = features_and_logits(model, glob, local, ids)
    if backend == "reference":  # the native model agrees with our own reference modules + layout
        with torch.no_grad():
            want = layout_tokens_v2(ours(glob)[0], ours.view_seperator, ours(local))
        torch.testing.assert_close(feats0, want, rtol=1e-4, atol=1e-5)

    vt_forward = model.model.vision_tower.forward
    patch(model, backend=backend, op_backend=op_backend)
    assert is_patched(model)
    patch(model, backend=backend, op_backend=op_backend)  # idempotent
    feats1, logits1 = features_and_logits(model, glob, local, ids)
    unpatch(model)
    feats2, logits2 = features_and_logits(model, glob, local, ids)
    assert not is_patched(model)
    assert "forward" not in model.model.vision_tower.__dict__ and model.model.vision_tower.forward == vt_forward
    # patched: equal to float32 rounding; unpatched: bit for bit the original
    torch.testing.assert_close(feats1, feats0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits1, logits0, rtol=1e-4, atol=1e-4)
    assert torch.equal(feats2, feats0) and torch.equal(logits2, logits0)
    # nothing was copied: the patched tower reads the native parameters themselves
    assert all(not p.is_meta for p in model.parameters())


def test_patch_native_refuses_hidden_states_request():
    model, _ = tiny_native()
    glob, _, _ = inputs()
    patch(model, backend="reference")
    with pytest.raises(ValueError, match="hidden states"):
        model.model.vision_tower(glob[:, :, :768, :768], output_hidden_states=True)
    unpatch(model)


class UpstreamV2Like(torch.nn.Module):
    """Upstream's OCR-2 tree names (``model.sam_model``, ``model.qwen2_model``, ``model.projector``) and its
    per-view call sequence (``_pixel_values_to_embedding``)."""

    def __init__(self, enc):
        super().__init__()
        self.model = enc

    def encode(self, x):
        m = self.model
        return m.projector(m.qwen2_model(m.sam_model(x)))


@pytest.mark.parametrize("backend,op_backend", [("reference", "auto"), ("fast", "torch")],
                         ids=["reference", "fast-torch-ops"])
def test_patch_upstream_v2_tree(backend, op_backend):
    ref = init_random_(DeepEncoderV2Reference(CFG), 5).eval()
    up = UpstreamV2Like(copy.deepcopy(ref))
    x = torch.rand(2, 3, 768, 768, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want = ref(x)
        before = up.encode(x)
        patch(up, backend=backend, op_backend=op_backend)
        got = up.encode(x)
        unpatch(up)
        after = up.encode(x)
    assert "forward" not in up.model.sam_model.__dict__ and "forward" not in up.model.qwen2_model.__dict__
    assert torch.equal(before, want) and torch.equal(after, want)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_patch_cuda_graphs_on_cpu_model_is_refused():
    up = UpstreamV2Like(DeepEncoderV2Reference(CFG))
    with pytest.raises(ValueError, match="cuda_graphs=True needs a model on a CUDA device"):
        patch(up, cuda_graphs=True)
    assert not is_patched(up)
