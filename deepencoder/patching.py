"""Drop-in patch: swap a loaded DeepSeek-OCR model's encoder for the fast path, in place.

    import deepencoder
    model = AutoModel.from_pretrained("deepseek-ai/DeepSeek-OCR", trust_remote_code=True, ...)
    deepencoder.patch(model)      # sam_model / vision_model now run on the kernels, sharing the weights
    ...
    deepencoder.unpatch(model)    # restores the original forwards

The patch finds the module holding ``sam_model`` and ``vision_model`` (the model itself, ``model.model``
in the Hugging Face remote code, or any descendant) and replaces their ``forward`` with fast versions
that keep upstream's signatures and outputs:

* ``sam_model(x)`` -> ``[B, 1024, g, g]`` (a view of the compressor's token-layout output, so upstream's
  ``flatten(2).permute(0, 2, 1)`` gets the tokens back without a copy);
* ``vision_model(x, sam_features)`` -> ``[B, 1+g^2, 1024]``.

Nothing is copied: the fast path reads the same parameters.
"""

from __future__ import annotations

from typing import Optional

import torch

from .fast import FastDeepEncoder

_ATTR = "_deepencoder_patch"


def find_encoder_holder(model: torch.nn.Module) -> torch.nn.Module:
    """The module that has both ``sam_model`` and ``vision_model`` (breadth-first)."""
    queue = [model]
    while queue:
        m = queue.pop(0)
        if hasattr(m, "sam_model") and hasattr(m, "vision_model"):
            return m
        queue.extend(m.children())
    raise ValueError("patch: no module with both 'sam_model' and 'vision_model' attributes found; is this a "
                     "DeepSeek-OCR model?")


def _check_tree(holder) -> None:
    sam, clip = holder.sam_model, holder.vision_model
    need = [(sam, "patch_embed"), (sam, "pos_embed"), (sam, "blocks"), (sam, "neck"), (sam, "net_2"), (sam, "net_3"),
            (clip, "embeddings"), (clip, "pre_layrnorm"), (clip, "transformer")]
    missing = [f"{type(m).__name__}.{a}" for m, a in need if not hasattr(m, a)]
    if missing:
        raise ValueError(f"patch: the encoder does not have upstream's attribute names: missing {missing}")


def patch(model: torch.nn.Module, cuda_graphs: bool = False, op_backend: str = "auto") -> torch.nn.Module:
    """Swap the encoder of ``model`` for the fast path in place; returns ``model``. Idempotent."""
    holder = find_encoder_holder(model)
    if getattr(holder, _ATTR, None) is not None:
        return model
    _check_tree(holder)
    projector = getattr(holder, "projector", None)
    shim = torch.nn.Module()
    shim.sam_model, shim.vision_model = holder.sam_model, holder.vision_model
    if projector is not None:
        shim.projector = projector
    fast = FastDeepEncoder(shim, cuda_graphs=False, op_backend=op_backend)
    sam, clip = holder.sam_model, holder.vision_model

    def sam_forward(x: torch.Tensor) -> torch.Tensor:
        tokens = fast.sam_forward(x)  # [B, g^2, C]
        B, n, C = tokens.shape
        g = int(round(n ** 0.5))
        return tokens.transpose(1, 2).view(B, C, g, g)

    def clip_forward(x: torch.Tensor, patch_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        if patch_embeds is None:
            raise ValueError("patched vision_model needs the SAM features (vision_model(x, sam_features)); "
                             "CLIP's own patch embedding is never run in DeepSeek-OCR")
        tokens = patch_embeds.flatten(2).transpose(1, 2)
        return fast.clip_forward(tokens)

    saved = {"sam": sam.__dict__.get("forward"), "clip": clip.__dict__.get("forward")}
    sam.forward = sam_forward
    clip.forward = clip_forward
    setattr(holder, _ATTR, saved)
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Restore the forwards :func:`patch` replaced; returns ``model``. A no-op on an unpatched model."""
    holder = find_encoder_holder(model)
    saved = getattr(holder, _ATTR, None)
    if saved is None:
        return model
    for mod, key in ((holder.sam_model, "sam"), (holder.vision_model, "clip")):
        if saved[key] is None:
            del mod.forward
        else:
            mod.forward = saved[key]
    delattr(holder, _ATTR)
    return model


def is_patched(model: torch.nn.Module) -> bool:
    return getattr(find_encoder_holder(model), _ATTR, None) is not None
