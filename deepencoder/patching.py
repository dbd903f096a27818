"""Drop-in patch: run a loaded model's vision encoder on this package, in place, sharing its weights.

    import deepencoder
    deepencoder.patch(model)      # the encoder now runs on the kernels (backend="fast", the default)
    deepencoder.patch(model, backend="reference")   # or on this package's reference modules
    deepencoder.unpatch(model)    # the original forwards back, exactly

Three module trees are recognised (breadth-first search from ``model``):

* **DeepSeek-OCR** (Hugging Face remote code, vLLM, or any tree with upstream's names): the module holding
  ``sam_model`` and ``vision_model``. ``sam_model(x) -> [B,1024,g,g]`` (a view of the compressor's
  token-layout output, so upstream's ``flatten(2).permute(0, 2, 1)`` gets the tokens back without a
  copy); ``vision_model(x, sam_features) -> [B,1+g^2,1024]``.
* **DeepSeek-OCR 2, upstream tree**: the module holding ``sam_model`` and ``qwen2_model``.
  ``sam_model(x) -> [B,896,g,g]``; ``qwen2_model(features) -> [B,g^2,896]`` (the query outputs). Our own
  flow mask is used: upstream's file loses its mask under transformers >= 5 (see the README).
* **DeepSeek-OCR 2, transformers-native** (``DeepseekOcr2ForConditionalGeneration`` /
  ``DeepseekOcr2Model``, transformers >= 5.10): the module whose ``vision_tower`` has ``sam_encoder``
  and ``vision_encoder``. ``vision_tower(pixel_values) -> BaseModelOutput(last_hidden_state=[B,n,896])``.
  The native parameters are shared into this package's module tree through the same rename table the
  checkpoint loader uses (:data:`deepencoder.weights.NATIVE_OCR2_RENAMES`): nothing is copied.

``cuda_graphs=True`` captures each patched forward per input shape (CUDA models only; refused otherwise).
"""

from __future__ import annotations

from typing import Optional

import torch

_ATTR = "_deepencoder_patch"
PATCH_BACKENDS = ("fast", "reference")


def _find(model: torch.nn.Module):
    """(holder, kind) with kind "ocr1", "ocr2" or "ocr2-native"; breadth-first."""
    queue = [model]
    while queue:
        m = queue.pop(0)
        if hasattr(m, "sam_model") and hasattr(m, "vision_model"):
            return m, "ocr1"
        if hasattr(m, "sam_model") and hasattr(m, "qwen2_model"):
            return m, "ocr2"
        vt = getattr(m, "vision_tower", None)
        if isinstance(vt, torch.nn.Module) and hasattr(vt, "sam_encoder") and hasattr(vt, "vision_encoder"):
            return m, "ocr2-native"
        queue.extend(m.children())
    raise ValueError("patch: no DeepSeek-OCR encoder found: expected a module with 'sam_model' and "
                     "'vision_model' (DeepSeek-OCR), 'sam_model' and 'qwen2_model' (DeepSeek-OCR 2), or a "
                     "'vision_tower' with 'sam_encoder' and 'vision_encoder' (transformers' DeepseekOcr2)")


def find_encoder_holder(model: torch.nn.Module) -> torch.nn.Module:
    """The module that holds the encoder (see the module docstring for the three trees)."""
    return _find(model)[0]


def _check_tree(holder, kind: str) -> None:
    if kind == "ocr1":
        sam, glob = holder.sam_model, holder.vision_model
        need = [(sam, "patch_embed"), (sam, "pos_embed"), (sam, "blocks"), (sam, "neck"), (sam, "net_2"),
                (sam, "net_3"), (glob, "embeddings"), (glob, "pre_layrnorm"), (glob, "transformer")]
    elif kind == "ocr2":
        sam, glob = holder.sam_model, holder.qwen2_model
        need = [(sam, "patch_embed"), (sam, "blocks"), (sam, "net_3"), (glob, "model"), (glob, "query_768"),
                (glob, "query_1024")]
    else:
        return
    missing = [f"{type(m).__name__}.{a}" for m, a in need if not hasattr(m, a)]
    if missing:
        raise ValueError(f"patch: the encoder does not have upstream's attribute names: missing {missing}")


def _device_of(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------------
# transformers-native OCR-2: share its parameters into this package's module tree
# ---------------------------------------------------------------------------------------------------


def config_from_native(holder):
    """A :class:`DeepEncoderV2Config` with the native model's sizes (real or tiny)."""
    from .config import DeepEncoderV2Config, FlowConfig, SAMConfig

    vc = holder.vision_tower.config
    sc, ec = vc.sam_config, vc.encoder_config
    down = list(sc.downsample_channels)
    img = sc.image_size if isinstance(sc.image_size, int) else sc.image_size[0]
    patch = sc.patch_size if isinstance(sc.patch_size, int) else sc.patch_size[0]
    sam = SAMConfig(img_size=img, patch_size=patch, in_chans=sc.num_channels, embed_dim=sc.hidden_size,
                    depth=sc.num_hidden_layers, num_heads=sc.num_attention_heads, mlp_ratio=sc.mlp_dim / sc.hidden_size,
                    window_size=sc.window_size, global_attn_indexes=tuple(sc.global_attn_indexes),
                    norm_eps=sc.layer_norm_eps, out_chans=sc.output_channels, net2_chans=down[0], net3_chans=down[1])
    theta = (getattr(ec, "rope_parameters", None) or {}).get("rope_theta", getattr(ec, "rope_theta", 1e6))
    vt = holder.vision_tower
    flow = FlowConfig(hidden_size=ec.hidden_size, num_layers=ec.num_hidden_layers, num_heads=ec.num_attention_heads,
                      num_kv_heads=ec.num_key_value_heads, intermediate_size=ec.intermediate_size,
                      rms_norm_eps=ec.rms_norm_eps, rope_theta=float(theta),
                      query_sizes=((768, vt.query_768_resolution.num_embeddings),
                                   (1024, vt.query_1024_resolution.num_embeddings)))
    proj = holder.multi_modal_projector
    return DeepEncoderV2Config(sam=sam, flow=flow, n_embed=proj.out_features, name="transformers-native")


def shared_reference_from_native(holder):
    """This package's :class:`DeepEncoderV2Reference` whose parameters ARE the native model's (shared)."""
    from .models import DeepEncoderV2Reference
    from .weights import upstream_to_native

    cfg = config_from_native(holder)
    with torch.device("meta"):
        ours = DeepEncoderV2Reference(cfg)
    native = dict(holder.named_parameters())
    for name, _ in list(ours.named_parameters()):
        nname = upstream_to_native(name)
        p = native.get(nname)
        if p is None:
            raise ValueError(f"patch: the native model has no parameter {nname!r} (ours: {name})")
        mod_name, _, leaf = name.rpartition(".")
        mod = ours.get_submodule(mod_name) if mod_name else ours
        if tuple(p.shape) != tuple(getattr(mod, leaf).shape):
            raise ValueError(f"patch: native {nname} has shape {tuple(p.shape)}, expected "
                             f"{tuple(getattr(mod, leaf).shape)}")
        mod._parameters[leaf] = p
    return ours.eval()


# ---------------------------------------------------------------------------------------------------
# patch / unpatch
# ---------------------------------------------------------------------------------------------------


def _graph_wrap(fn, enabled: bool):
    """``fn(x) -> tensor`` replayed from a CUDA graph per input shape when ``enabled``."""
    if not enabled:
        return fn
    from .fast.trunk import GraphedForward

    class _G(GraphedForward):
        def forward(self, x):
            return fn(x)

    g = _G()
    g._init_graphs(True)
    return g


def patch(model: torch.nn.Module, cuda_graphs: bool = False, op_backend: str = "auto",
          backend: str = "fast") -> torch.nn.Module:
    """Run the encoder of ``model`` on this package in place; returns ``model``. Idempotent.

    backend: "fast" (the kernels; ``op_backend`` "auto" | "triton" | "torch" is handed to every op) or
    "reference" (this package's upstream-faithful modules over the same weights).
    """
    if backend not in PATCH_BACKENDS:
        raise ValueError(f"patch: unknown backend {backend!r}: choose one of {', '.join(PATCH_BACKENDS)}")
    holder, kind = _find(model)
    if getattr(holder, _ATTR, None) is not None:
        return model
    _check_tree(holder, kind)
    if cuda_graphs and _device_of(holder).type != "cuda":
        raise ValueError(f"patch: cuda_graphs=True needs a model on a CUDA device (this one is on "
                         f"{_device_of(holder)})")
    if kind == "ocr1":
        saved = _patch_ocr1(holder, cuda_graphs, op_backend, backend)
    elif kind == "ocr2":
        saved = _patch_ocr2(holder, cuda_graphs, op_backend, backend)
    else:
        saved = _patch_native(holder, cuda_graphs, op_backend, backend)
    setattr(holder, _ATTR, saved)
    return model


def _tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, g^2, C]`` -> a ``[B, C, g, g]`` view (upstream's layout; ``flatten(2).transpose`` undoes it)."""
    B, n, C = tokens.shape
    g = int(round(n ** 0.5))
    return tokens.transpose(1, 2).view(B, C, g, g)


def _patch_ocr1(holder, cuda_graphs, op_backend, backend):
    from .fast import FastDeepEncoder

    sam, clip = holder.sam_model, holder.vision_model
    shim = torch.nn.Module()
    shim.sam_model, shim.vision_model = sam, clip
    if getattr(holder, "projector", None) is not None:
        shim.projector = holder.projector
    if backend == "reference":
        raise ValueError("patch: backend='reference' for a DeepSeek-OCR tree would run the same upstream code "
                         "it already runs; use backend='fast'")
    fast = FastDeepEncoder(shim, cuda_graphs=False, op_backend=op_backend)
    sam_fn = _graph_wrap(lambda x: _tokens_to_map(fast.sam_forward(x)), cuda_graphs)
    clip_fn = _graph_wrap(lambda t: fast.clip_forward(t), cuda_graphs)

    def sam_forward(x: torch.Tensor) -> torch.Tensor:
        return sam_fn(x)

    def clip_forward(x: torch.Tensor, patch_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        if patch_embeds is None:
            raise ValueError("patched vision_model needs the SAM features (vision_model(x, sam_features)); "
                             "CLIP's own patch embedding is never run in DeepSeek-OCR")
        return clip_fn(patch_embeds.flatten(2).transpose(1, 2))

    return _install({"sam": (sam, sam_forward), "clip": (clip, clip_forward)})


def _patch_ocr2(holder, cuda_graphs, op_backend, backend):
    sam, flow = holder.sam_model, holder.qwen2_model
    if backend == "reference":
        from .models.flow import FlowEncoder

        # our flow encoder (our mask, our layers) over upstream's parameters: same names, shared
        cfg = _flow_config_from_tree(flow)
        with torch.device("meta"):
            ours = FlowEncoder(cfg)
        for name, p in flow.named_parameters():
            mod_name, _, leaf = name.rpartition(".")
            ours.get_submodule(mod_name)._parameters[leaf] = p
        sam_fn = None  # upstream's SAM code is the reference SAM code
        flow_fn = _graph_wrap(lambda f: ours(f), cuda_graphs)
    else:
        from .fast import FastDeepEncoderV2

        shim = torch.nn.Module()
        shim.sam_model, shim.qwen2_model = sam, flow
        shim.projector = getattr(holder, "projector", torch.nn.Identity())
        fast = FastDeepEncoderV2(shim, cuda_graphs=False, op_backend=op_backend)
        sam_fn = _graph_wrap(lambda x: _tokens_to_map(fast.sam_forward(x)), cuda_graphs)
        flow_fn = _graph_wrap(fast.flow_from_features, cuda_graphs)
    entries = {"flow": (flow, lambda x, *a, **k: flow_fn(x))}
    if sam_fn is not None:
        entries["sam"] = (sam, lambda x: sam_fn(x))
    return _install(entries)


def _flow_config_from_tree(flow):
    from .config import FlowConfig
    from .fast.ocr2 import flow_geometry

    dec = flow.model.model
    layers = list(dec.layers)
    heads, kv, eps, theta = flow_geometry(dec, layers[0])
    a = layers[0].self_attn
    return FlowConfig(hidden_size=a.q_proj.in_features, num_layers=len(layers), num_heads=heads, num_kv_heads=kv,
                      intermediate_size=layers[0].mlp.gate_proj.out_features, rms_norm_eps=eps, rope_theta=theta,
                      query_sizes=((768, flow.query_768.num_embeddings), (1024, flow.query_1024.num_embeddings)))


def _patch_native(holder, cuda_graphs, op_backend, backend):
    from transformers.modeling_outputs import BaseModelOutput

    ours = shared_reference_from_native(holder)
    if backend == "reference":
        fn = lambda x: ours.qwen2_model(ours.sam_model(x))
    else:
        from .fast import FastDeepEncoderV2

        fn = FastDeepEncoderV2(ours, cuda_graphs=False, op_backend=op_backend).query_tokens
    run = _graph_wrap(fn, cuda_graphs)

    def vision_tower_forward(pixel_values: torch.Tensor, **kwargs):
        if kwargs.get("output_hidden_states") or kwargs.get("output_attentions"):
            raise ValueError("patched vision_tower (deepencoder) returns no per-layer hidden states or attentions; "
                             "unpatch the model to get them")
        return BaseModelOutput(last_hidden_state=run(pixel_values))

    return _install({"vision_tower": (holder.vision_tower, vision_tower_forward)}, keep=ours)


def _install(entries, keep=None):
    saved = {}
    for key, (mod, fwd) in entries.items():
        saved[key] = (mod, mod.__dict__.get("forward"))
        mod.forward = fwd
    if keep is not None:
        saved["_keep"] = (keep, None)
    return saved


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Restore the forwards :func:`patch` replaced; returns ``model``. A no-op on an unpatched model."""
    holder, _ = _find(model)
    saved = getattr(holder, _ATTR, None)
    if saved is None:
        return model
    for key, (mod, fwd) in saved.items():
        if key == "_keep":
            continue
        if fwd is None:
            del mod.forward
        else:
            mod.forward = fwd
    delattr(holder, _ATTR)
    return model


def is_patched(model: torch.nn.Module) -> bool:
    return getattr(find_encoder_holder(model), _ATTR, None) is not None
