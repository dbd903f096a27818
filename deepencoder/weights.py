"""Checkpoint loading from the DeepSeek-OCR safetensors, and seeded random weights.

The DeepSeek-OCR checkpoint holds the encoder under ``model.`` (``model.sam_model.*``,
``model.vision_model.*``, ``model.projector.*``, ``model.image_newline``, ``model.view_seperator``) beside a
3B language model. :func:`load_encoder_state_dict` opens the file(s) lazily with ``safe_open`` and reads
only the encoder's tensors, so the language model never enters memory.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Optional, Tuple

import torch

ENCODER_PREFIXES = ("sam_model.", "vision_model.", "projector.", "image_newline", "view_seperator")
CHECKPOINT_PREFIX = "model."
# Buffers some saves carry that are not parameters of the encoder.
IGNORED_KEYS = ("vision_model.embeddings.position_ids",)


class CheckpointError(ValueError):
    """The checkpoint does not fit the model: lists missing, unexpected and wrongly shaped keys."""


def _is_encoder_key(key: str) -> bool:
    return key.startswith(ENCODER_PREFIXES)


def _strip(key: str) -> Optional[str]:
    """Checkpoint key -> encoder state-dict key, or None for tensors that are not the encoder's."""
    k = key[len(CHECKPOINT_PREFIX):] if key.startswith(CHECKPOINT_PREFIX) else key
    return k if _is_encoder_key(k) else None


def checkpoint_files(path: str) -> List[str]:
    """Resolve a checkpoint path: a ``.safetensors`` file, an index ``.json``, or a folder holding either."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        idx = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(idx):
            path = idx
        elif os.path.exists(single):
            path = single
        else:
            found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            if not found:
                raise FileNotFoundError(f"no .safetensors file or index json in folder {path}")
            return [os.path.join(path, f) for f in found]
    if path.endswith(".json"):
        try:
            with open(path) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{path} is not a safetensors index (needs a 'weight_map'): {e}") from e
        base = os.path.dirname(path)
        # Only the shards that hold encoder tensors are opened.
        shards = sorted({v for k, v in weight_map.items() if _strip(k) is not None})
        if not shards:
            raise CheckpointError(f"index {path} lists no encoder tensors (keys under '{CHECKPOINT_PREFIX}"
                                  "sam_model.', 'vision_model.', 'projector.')")
        return [os.path.join(base, s) for s in shards]
    return [path]


def load_encoder_state_dict(path: str, device: str = "cpu") -> Dict[str, torch.Tensor]:
    """Read only the encoder tensors of a DeepSeek-OCR checkpoint (prefix ``model.`` stripped)."""
    from safetensors import SafetensorError, safe_open

    out: Dict[str, torch.Tensor] = {}
    for fn in checkpoint_files(path):
        if not os.path.exists(fn):
            raise FileNotFoundError(f"checkpoint shard listed in the index is missing: {fn}")
        try:
            with safe_open(fn, framework="pt", device=device) as f:
                for key in f.keys():
                    k = _strip(key)
                    if k is not None:
                        out[k] = f.get_tensor(key)
        except SafetensorError as e:
            raise CheckpointError(f"cannot read safetensors file {fn}: {e}") from e
    return out


def check_state_dict(model: torch.nn.Module, sd: Dict[str, torch.Tensor],
                     strict: bool = True) -> Tuple[List[str], List[str], List[str]]:
    """(missing, unexpected, wrongly shaped) keys; raises :class:`CheckpointError` if strict and any."""
    expected = model.state_dict()
    keys = set(k for k in sd if k not in IGNORED_KEYS)
    missing = sorted(set(expected) - keys)
    unexpected = sorted(keys - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in keys & set(expected)
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    )
    if strict and (missing or unexpected or shapes):
        lines = ["checkpoint does not match the DeepEncoder model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("wrongly shaped keys", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {x}" for x in items[:50])
                if len(items) > 50:
                    lines.append(f"    ... and {len(items) - 50} more")
        raise CheckpointError("\n".join(lines))
    if shapes:
        raise CheckpointError("wrongly shaped keys cannot load even with strict=False:\n  " + "\n  ".join(shapes))
    return missing, unexpected, shapes


def load_checkpoint(model: torch.nn.Module, path: str, strict: bool = True):
    """Load a DeepSeek-OCR checkpoint (file, index json or folder) into ``model`` in place."""
    sd = load_encoder_state_dict(path)
    missing, unexpected, _ = check_state_dict(model, sd, strict=strict)
    params = {k: v for k, v in sd.items() if k not in IGNORED_KEYS and k not in unexpected}
    with torch.no_grad():
        own = model.state_dict()
        for k, v in params.items():
            own[k].copy_(v.to(own[k].dtype))
    return missing, unexpected


def save_checkpoint(model: torch.nn.Module, path: str, extra: Optional[Dict[str, torch.Tensor]] = None,
                    shard_size: Optional[int] = None) -> List[str]:
    """Write the encoder in DeepSeek-OCR layout (``model.`` prefix), optionally with extra tensors
    (e.g. language-model weights) and sharded with an index json. Returns the files written."""
    from safetensors.torch import save_file

    tensors = {CHECKPOINT_PREFIX + k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({k: v.contiguous() for k, v in (extra or {}).items()})
    if shard_size is None:
        save_file(tensors, path, metadata={"format": "pt"})
        return [path]
    keys = sorted(tensors)
    shards: List[List[str]] = [keys[i:i + shard_size] for i in range(0, len(keys), shard_size)]
    base = os.path.dirname(path) or "."
    weight_map = {}
    files = []
    for i, ks in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: tensors[k] for k in ks}, os.path.join(base, name), metadata={"format": "pt"})
        files.append(os.path.join(base, name))
        weight_map.update({k: name for k in ks})
    with open(path, "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
    return files + [path]


def init_random_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded random weights with sensible scales (outputs are finite but MEANINGLESS)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            shape = p.shape
            if name.endswith(("norm1.weight", "norm2.weight", "layer_norm1.weight", "layer_norm2.weight",
                              "pre_layrnorm.weight", "neck.1.weight", "neck.3.weight")):
                val = 1.0 + 0.1 * torch.randn(shape, generator=g)
            elif p.dim() >= 2 and "rel_pos" not in name and "pos_embed" not in name \
                    and "position_embedding" not in name:
                fan_in = p[0].numel()
                val = torch.randn(shape, generator=g) / fan_in ** 0.5
            elif "rel_pos" in name:
                val = 0.05 * torch.randn(shape, generator=g)
            elif name.endswith(("image_newline", "view_seperator")):
                val = torch.randn(shape, generator=g) / shape[0] ** 0.5
            else:  # biases, pos embeddings, class embedding
                val = 0.02 * torch.randn(shape, generator=g)
            p.copy_(val.to(p.dtype))
    return model


def iter_encoder_keys(keys: Iterable[str]) -> List[str]:
    return [k for k in keys if _strip(k) is not None]
