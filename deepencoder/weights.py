"""Checkpoint loading for both model families, in every key scheme, and seeded random weights.

Key schemes (every key starts with ``model.``, which is stripped; the language model beside the encoder
is never read):

* ``"ocr1"``: DeepSeek-OCR: ``sam_model.*``, ``vision_model.*``, ``projector.*``, ``image_newline``,
  ``view_seperator``.
* ``"ocr2"``: DeepSeek-OCR 2 as upstream saves it: ``sam_model.*``, ``qwen2_model.*``, ``projector.*``,
  ``view_seperator``.
* ``"ocr2-hf"``: DeepSeek-OCR 2 as transformers' native ``deepseek_ocr2`` names it
  (``vision_tower.sam_encoder.*``, ``vision_tower.vision_encoder.*``, ``multi_modal_projector.*``,
  ``view_separator``): mapped onto upstream's names by one table, :data:`NATIVE_OCR2_RENAMES`, used both
  ways (loading, saving, and patching the native model class).

The reference modules' ``state_dict()`` keys are upstream's names, so loading is a rename and a copy.
:func:`load_encoder_state_dict` opens the file(s) lazily with ``safe_open`` and reads only encoder tensors.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, Iterable, List, Optional, Tuple

import torch

CHECKPOINT_PREFIX = "model."
ENCODER_PREFIXES = {
    "ocr1": ("sam_model.", "vision_model.", "projector.", "image_newline", "view_seperator"),
    "ocr2": ("sam_model.", "qwen2_model.", "projector.", "view_seperator"),
    "ocr2-hf": ("vision_tower.", "multi_modal_projector.", "view_separator"),
}
SCHEME_FAMILY = {"ocr1": "ocr1", "ocr2": "ocr2", "ocr2-hf": "ocr2"}
_ALL_PREFIXES = tuple(sorted({p for ps in ENCODER_PREFIXES.values() for p in ps}))
# Buffers some saves carry that are not parameters of the encoder.
IGNORED_KEYS = ("vision_model.embeddings.position_ids",)

# transformers-native deepseek_ocr2 name -> upstream OCR-2 name ({N}: a layer index). First match wins.
NATIVE_OCR2_RENAMES: Tuple[Tuple[str, str], ...] = (
    ("vision_tower.sam_encoder.patch_embed.projection.", "sam_model.patch_embed.proj."),
    ("vision_tower.sam_encoder.pos_embed", "sam_model.pos_embed"),
    ("vision_tower.sam_encoder.layers.{N}.layer_norm1.", "sam_model.blocks.{N}.norm1."),
    ("vision_tower.sam_encoder.layers.{N}.layer_norm2.", "sam_model.blocks.{N}.norm2."),
    ("vision_tower.sam_encoder.layers.{N}.", "sam_model.blocks.{N}."),
    ("vision_tower.sam_encoder.neck.conv1.", "sam_model.neck.0."),
    ("vision_tower.sam_encoder.neck.layer_norm1.", "sam_model.neck.1."),
    ("vision_tower.sam_encoder.neck.conv2.", "sam_model.neck.2."),
    ("vision_tower.sam_encoder.neck.layer_norm2.", "sam_model.neck.3."),
    ("vision_tower.sam_encoder.proj.conv1.", "sam_model.net_2."),
    ("vision_tower.sam_encoder.proj.conv2.", "sam_model.net_3."),
    ("vision_tower.vision_encoder.layers.", "qwen2_model.model.model.layers."),
    ("vision_tower.vision_encoder.norm.", "qwen2_model.model.model.norm."),
    ("vision_tower.query_768_resolution.", "qwen2_model.query_768."),
    ("vision_tower.query_1024_resolution.", "qwen2_model.query_1024."),
    ("multi_modal_projector.", "projector.layers."),
    ("view_separator", "view_seperator"),
)


def _compile(pattern: str):
    return re.compile("^" + re.escape(pattern).replace(re.escape("{N}"), r"(?P<N>\d+)"))


_NATIVE_TO_UP = [(_compile(a), b) for a, b in NATIVE_OCR2_RENAMES]
_UP_TO_NATIVE = [(_compile(b), a) for a, b in NATIVE_OCR2_RENAMES]


def _rename(key: str, rules) -> Optional[str]:
    for rx, repl in rules:
        m = rx.match(key)
        if m:
            head = repl.replace("{N}", m.group("N")) if "N" in rx.groupindex else repl
            return head + key[m.end():]
    return None


def native_to_upstream(key: str) -> Optional[str]:
    """A transformers-native ``deepseek_ocr2`` encoder key (without ``model.``) -> upstream's name, or None."""
    return _rename(key, _NATIVE_TO_UP)


def upstream_to_native(key: str) -> Optional[str]:
    """An upstream OCR-2 encoder key (without ``model.``) -> transformers-native name, or None."""
    return _rename(key, _UP_TO_NATIVE)


class CheckpointError(ValueError):
    """The checkpoint does not fit the model: lists missing, unexpected and wrongly shaped keys."""


def _bare(key: str) -> str:
    return key[len(CHECKPOINT_PREFIX):] if key.startswith(CHECKPOINT_PREFIX) else key


def _is_encoder_key(key: str, scheme: Optional[str] = None) -> bool:
    return key.startswith(ENCODER_PREFIXES[scheme] if scheme else _ALL_PREFIXES)


def detect_scheme(keys: Iterable[str], source: str = "checkpoint") -> str:
    """``"ocr1"``, ``"ocr2"`` or ``"ocr2-hf"`` from a checkpoint's keys; CheckpointError when none fits."""
    bare = [_bare(k) for k in keys]
    has = lambda prefix: any(k.startswith(prefix) for k in bare)
    if has("qwen2_model."):
        return "ocr2"
    if has("vision_tower.sam_encoder.") and has("vision_tower.vision_encoder."):
        return "ocr2-hf"
    if has("vision_model.") and has("sam_model."):
        return "ocr1"
    sample = ", ".join(sorted(bare)[:3]) or "no keys"
    raise CheckpointError(f"{source}: its keys match neither DeepSeek-OCR ('model.sam_model.*' + "
                          "'model.vision_model.*') nor DeepSeek-OCR 2 ('model.sam_model.*' + 'model.qwen2_model.*', "
                          f"or transformers' 'model.vision_tower.*'); first keys: {sample}")


def _strip(key: str, scheme: Optional[str] = None) -> Optional[str]:
    """Checkpoint key -> the reference model's state-dict key (upstream names), or None for tensors that are
    not the encoder's (e.g. the language model)."""
    k = _bare(key)
    if not _is_encoder_key(k, scheme):
        return None
    if scheme == "ocr2-hf" or (scheme is None and k.startswith(ENCODER_PREFIXES["ocr2-hf"])):
        return native_to_upstream(k)
    return k


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
        weight_map = read_index(path)
        base = os.path.dirname(path)
        # Only the shards that hold encoder tensors are opened.
        shards = sorted({v for k, v in weight_map.items() if _strip(k) is not None})
        if not shards:
            raise CheckpointError(f"index {path} lists no encoder tensors (keys under '{CHECKPOINT_PREFIX}"
                                  "sam_model.', 'vision_model.', 'qwen2_model.', 'vision_tower.', 'projector.')")
        return [os.path.join(base, s) for s in shards]
    return [path]


def checkpoint_keys(path: str) -> List[str]:
    """Every tensor name of a checkpoint (file, index json or folder) without reading any tensor."""
    from safetensors import safe_open

    keys: List[str] = []
    for fn in checkpoint_files(path):
        check_safetensors_file(fn)
        with _reading(fn):
            with safe_open(fn, framework="pt") as f:
                keys += list(f.keys())
    return keys


def checkpoint_scheme(path: str) -> str:
    """The key scheme (``"ocr1"``, ``"ocr2"``, ``"ocr2-hf"``) of a checkpoint, from its keys alone."""
    return detect_scheme(checkpoint_keys(path), source=path)


def checkpoint_family(path: str) -> str:
    """The model family (``"ocr1"`` or ``"ocr2"``) a checkpoint holds."""
    return SCHEME_FAMILY[checkpoint_scheme(path)]


def load_encoder_state_dict(path: str, device: str = "cpu", scheme: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read only the encoder tensors of a checkpoint, renamed to the reference model's keys (upstream
    names, ``model.`` stripped). ``scheme`` None: detected from the keys.

    Every tensor read is validated (:func:`validate_tensor`): floating dtype and finite values."""
    from safetensors import safe_open

    files = checkpoint_files(path)
    if scheme is None:
        scheme = checkpoint_scheme(path)
    out: Dict[str, torch.Tensor] = {}
    for fn in files:
        check_safetensors_file(fn)
        with _reading(fn):
            with safe_open(fn, framework="pt", device=device) as f:
                for key in f.keys():
                    k = _strip(key, scheme)
                    if k is not None and k not in IGNORED_KEYS:
                        out[k] = validate_tensor(f.get_tensor(key), key, fn)
                    elif k is not None:
                        out[k] = f.get_tensor(key)
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
        family = getattr(getattr(model, "cfg", None), "family", "ocr1")
        lines = [f"checkpoint does not match the {family} encoder model:"]
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


FAMILY_NAMES = {"ocr1": "DeepSeek-OCR (ocr1)", "ocr2": "DeepSeek-OCR 2 (ocr2)"}


def _family_mismatch(path: str, scheme: str, family: str):
    have = SCHEME_FAMILY[scheme]
    raise CheckpointError(f"{path} is a {FAMILY_NAMES[have]} checkpoint, but the model is {FAMILY_NAMES[family]}: "
                          f"choose the model family that matches (--model {have}) or leave it to auto-detection")


def load_checkpoint(model: torch.nn.Module, path: str, strict: bool = True):
    """Load a checkpoint (file, index json or folder; any key scheme of ``model``'s family) in place.

    A checkpoint of the other family is refused with a one-line error naming both."""
    scheme = checkpoint_scheme(path)
    family = getattr(getattr(model, "cfg", None), "family", "ocr1")
    if SCHEME_FAMILY[scheme] != family:
        _family_mismatch(path, scheme, family)
    sd = load_encoder_state_dict(path, scheme=scheme)
    missing, unexpected, _ = check_state_dict(model, sd, strict=strict)
    params = {k: v for k, v in sd.items() if k not in IGNORED_KEYS and k not in unexpected}
    with torch.no_grad():
        own = model.state_dict()
        for k, v in params.items():
            own[k].copy_(v.to(own[k].dtype))
    return missing, unexpected


def save_checkpoint(model: torch.nn.Module, path: str, extra: Optional[Dict[str, torch.Tensor]] = None,
                    shard_size: Optional[int] = None, scheme: Optional[str] = None) -> List[str]:
    """Write the encoder in its checkpoint layout (``model.`` prefix; ``scheme="ocr2-hf"`` writes an OCR-2
    encoder under transformers' native names), optionally with extra tensors (e.g. language-model
    weights) and sharded with an index json. Returns the files written."""
    from safetensors.torch import save_file

    rename = upstream_to_native if scheme == "ocr2-hf" else (lambda k: k)
    tensors = {CHECKPOINT_PREFIX + rename(k): v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
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


# ---------------------------------------------------------------------------------------------- validation
# A checkpoint is checked twice: cheaply before any model is built (:func:`preflight_checkpoint`: files,
# index, headers, key names, shapes and dtypes, so a CLI can fail in a second instead of after the model
# build), and fully when read (:func:`validate_tensor`: every value finite). A wrong dtype or a NaN would
# otherwise be cast or propagated silently into meaningless tokens.

_SAFETENSORS_MAGIC_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header size


def read_index(path: str) -> Dict[str, str]:
    """The ``weight_map`` of a sharded-checkpoint index json: ``{tensor name: shard file name}``."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a safetensors index json ({e})") from None
    if not isinstance(obj, dict) or "weight_map" not in obj:
        raise CheckpointError(f"{path}: not a safetensors index (needs a 'weight_map' object "
                              "{tensor name: shard file})")
    weight_map = obj["weight_map"]
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: 'weight_map' must be an object {{tensor name: shard file}}, got "
                              f"{type(weight_map).__name__}")
    bad = [k for k, v in weight_map.items() if not isinstance(v, str) or not v or os.path.isabs(v)
           or ".." in v.replace("\\", "/").split("/")]
    if bad:
        raise CheckpointError(f"{path}: 'weight_map' entry {bad[0]!r} -> {weight_map[bad[0]]!r} is not a shard "
                              "file name in the index's folder")
    return weight_map


def check_safetensors_file(fn: str) -> None:
    """Refuse a missing shard or a file that is not safetensors (e.g. a pickled ``.pt``) with one line."""
    if not os.path.exists(fn):
        raise CheckpointError(f"checkpoint file is missing: {fn}")
    if os.path.isdir(fn):
        raise CheckpointError(f"{fn}: is a folder, expected a .safetensors file")
    with open(fn, "rb") as f:
        head = f.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if len(head) < 9 or head[8:9] != b"{" or not 0 < n < _SAFETENSORS_MAGIC_MAX_HEADER:
        kind = " (a zip/pickle file: PyTorch .pt/.bin checkpoints are not read; convert to safetensors)" \
            if head[:2] in (b"PK", b"\x80\x02") or head[:1] == b"\x80" else ""
        raise CheckpointError(f"{fn}: not a safetensors file{kind}")


class _reading:
    """Turn safetensors' own read errors into a one-line :class:`CheckpointError` naming the file."""

    def __init__(self, fn: str):
        self.fn = fn

    def __enter__(self):
        return self

    def __exit__(self, typ, e, tb):
        from safetensors import SafetensorError

        if e is not None and isinstance(e, (SafetensorError, OSError)) and not isinstance(e, CheckpointError):
            raise CheckpointError(f"cannot read safetensors file {self.fn}: {e}") from e
        return False


def validate_tensor(t: torch.Tensor, key: str, fn: str = "") -> torch.Tensor:
    """An encoder tensor must be floating point and finite; returns ``t`` unchanged."""
    where = f"{fn}: " if fn else ""
    if not t.is_floating_point():
        raise CheckpointError(f"{where}tensor {key} has dtype {str(t.dtype).replace('torch.', '')}; encoder "
                              "weights must be floating point (an integer tensor would be cast silently)")
    bad = (~torch.isfinite(t)).sum().item() if t.numel() else 0
    if bad:
        raise CheckpointError(f"{where}tensor {key} holds {bad} non-finite value(s) (NaN/Inf) of {t.numel()}; "
                              "the checkpoint is corrupt")
    return t


def preflight_checkpoint(path: str, model: torch.nn.Module, strict: bool = True) -> None:
    """Check a checkpoint against ``model`` (may live on the ``meta`` device) from the file headers only:
    files present and safetensors, index well formed, encoder keys, shapes and floating dtypes.
    Raises :class:`CheckpointError`; reads no tensor data."""
    from safetensors import safe_open

    try:
        files = checkpoint_files(path)
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None
    shapes: Dict[str, Tuple[int, ...]] = {}
    scheme = checkpoint_scheme(path)
    family = getattr(getattr(model, "cfg", None), "family", "ocr1")
    if SCHEME_FAMILY[scheme] != family:
        _family_mismatch(path, scheme, family)
    for fn in files:
        check_safetensors_file(fn)
        with _reading(fn):
            with safe_open(fn, framework="pt") as f:
                for key in f.keys():
                    k = _strip(key, scheme)
                    if k is None or k in IGNORED_KEYS:
                        continue
                    sl = f.get_slice(key)
                    dt = sl.get_dtype()
                    if dt not in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"):
                        raise CheckpointError(f"{fn}: tensor {key} has dtype {dt}; encoder weights must be "
                                              "floating point (an integer tensor would be cast silently)")
                    shapes[k] = tuple(sl.get_shape())
    check_state_dict(model, {k: _Shaped(s) for k, s in shapes.items()}, strict=strict)


class _Shaped:
    """Stands in for a tensor where :func:`check_state_dict` only looks at ``.shape``."""

    def __init__(self, shape):
        self.shape = shape


def init_random_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded random weights with sensible scales (outputs are finite but MEANINGLESS)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            shape = p.shape
            if name.endswith(("norm1.weight", "norm2.weight", "layer_norm1.weight", "layer_norm2.weight",
                              "pre_layrnorm.weight", "neck.1.weight", "neck.3.weight", "input_layernorm.weight",
                              "post_attention_layernorm.weight", "model.norm.weight")):
                val = 1.0 + 0.1 * torch.randn(shape, generator=g)
            elif "query_" in name:  # learned flow queries: embedding-scale rows
                val = 0.5 * torch.randn(shape, generator=g)
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
