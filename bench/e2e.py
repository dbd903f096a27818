"""End-to-end cases: pixels (or a Gundam page's views) -> vision tokens through :class:`DeepEncoder`.

One set of seeded random weights serves every provider: the ``reference`` encoder is built once per run
and the ``fast`` / ``fast-graphs`` encoders are views of it (same module, another backend), so no
provider pays a second weight initialisation. The oracle is a second encoder with the same seed in high
precision (float32 on CUDA with TF32 off; float64 on the CPU).

Gundam rows time :meth:`DeepEncoder.encode_views` on preprocessed views of a 2 x 3-tile page (one
1024 global view + six 640 tiles; 903 tokens): every tile of every page in one SAM/CLIP batch (chunks of
``max_batch``), the layout with newlines and separator included, image decoding and resizing excluded
(the preprocessing benchmarks cover those).

OCR-2 rows (``family="ocr2"``, DeepSeek-OCR 2; modes ``ocr2-*``, the family in every row): ``ocr2-base`` is
the 1024 global view alone through ``encode_pixels``; ``ocr2-gundam`` a page of one 1024 global view + six
768 crops in a 3 x 2 grid (6 x 144 + 256 + 1 = 1121 tokens) through ``encode_views``, all crops of all pages
in one batch (the OCR-2 pool's ``max_batch`` is 64 for every provider). Providers:

* ``upstream``: the reference model with upstream's mask construction switched on
  (``FlowDecoder.upstream_mask_loop``: ``token_type_ids`` on the CPU, then per sample a Python loop with
  two indexed writes per query into a ``[2n, 2n]`` float mask on the device, every forward) and SDPA
  over the materialised mask with K/V repeated, as DeepSeek-OCR 2's eager transformers decoder runs;
* ``upstream-compile``: ``torch.compile`` of that same module (the mask loop included: dynamo runs it
  eagerly at its graph break);
* ``fast`` / ``fast-graphs``: ``DeepEncoder(family="ocr2", backend="fast")`` over the same weights.

The oracle is the reference without the loop (the same mask values) in high precision. FLOPs:
:func:`bench.flops.ocr2_view_flops` / :func:`bench.flops.ocr2_page_flops` (SPEC_V2's cost terms, attention
counted dense as upstream computes it).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from deepencoder.config import DeepEncoderConfig, grid_sizes, normalize_family

from . import flops as fl
from .cases import Case, Provider, Unavailable, _compile_note, _gen


@dataclass(frozen=True)
class E2EMode:
    name: str
    size: int  # global view side
    tiles: Optional[Tuple[int, int]] = None  # (across, down) for Gundam
    tile_size: int = 640
    family: str = "ocr1"  # "ocr2": DeepSeek-OCR 2 (its own pool, providers and FLOP model)


REAL_MODES = {
    "tiny": E2EMode("tiny", 512), "small": E2EMode("small", 640), "base": E2EMode("base", 1024),
    "large": E2EMode("large", 1280), "gundam": E2EMode("gundam", 1024, (2, 3), 640),
    # OCR-2: the global view alone; a page of 1024 global + 3 x 2 crops of 768 (1121 tokens)
    "ocr2-base": E2EMode("ocr2-base", 1024, family="ocr2"),
    "ocr2-gundam": E2EMode("ocr2-gundam", 1024, (3, 2), 768, family="ocr2"),
}
# --smoke: the small test config at sizes the CPU (and the Triton interpreter) runs in seconds
SMOKE_MODES = {
    "smoke-tiny": E2EMode("smoke-tiny", 128), "smoke-gundam": E2EMode("smoke-gundam", 128, (2, 3), 64),
    # OCR-2's learned query tables fix the view sides (1024 global, 768 crop): the small V2 config runs the
    # real sides (~0.5 s per 1024 view with the reference on one CPU thread); a page with 2 crops (545 tokens)
    "smoke-ocr2-base": E2EMode("smoke-ocr2-base", 1024, family="ocr2"),
    "smoke-ocr2-gundam": E2EMode("smoke-ocr2-gundam", 1024, (2, 1), 768, family="ocr2"),
}

OCR2_MAX_BATCH = 64  # every crop of 8 pages (48) in one SAM/flow batch, for every OCR-2 provider alike


class EncoderPool:
    """Lazily built encoders shared by all end-to-end cases of one run."""

    def __init__(self, cfg, device: torch.device, dtype: torch.dtype, seed: int = 0,
                 max_batch: Optional[int] = None):
        self.cfg, self.device, self.dtype, self.seed = cfg, device, dtype, seed
        self.family = normalize_family(getattr(cfg, "family", "ocr1"))
        self.max_batch = max_batch or (OCR2_MAX_BATCH if self.family == "ocr2" else 32)
        self.oracle_dtype = torch.float32 if device.type == "cuda" else torch.float64
        self._d: Dict[str, Any] = {}

    def _new(self, dtype, backend="reference"):
        import warnings

        from deepencoder import DeepEncoder
        from deepencoder.encoder import RandomWeightsWarning

        with warnings.catch_warnings():  # seeded random weights are the point here
            warnings.simplefilter("ignore", RandomWeightsWarning)
            return DeepEncoder(self.cfg, weights=None, device=self.device, dtype=dtype, backend=backend,
                               seed=self.seed, max_batch=self.max_batch)

    @property
    def reference(self):
        """The eager reference; for OCR-2 with upstream's per-token mask loop on (the ``upstream`` row).
        The fast variants share its module but not its forward, so the flag does not reach them."""
        if "reference" not in self._d:
            enc = self._new(self.dtype)
            if self.family == "ocr2":
                enc.model.qwen2_model.model.model.upstream_mask_loop = True
            self._d["reference"] = enc
        return self._d["reference"]

    @property
    def oracle(self):
        if "oracle" not in self._d:
            self._d["oracle"] = self._new(self.oracle_dtype)
        return self._d["oracle"]

    def variant(self, name: str, backend: str, cuda_graphs: bool = False):
        """An encoder over the reference's weights running ``backend`` (raises Unavailable if it can't)."""
        if name in self._d:
            return self._d[name]
        ref = self.reference
        try:
            from deepencoder import fast

            fast.check_runnable(self.device, self.dtype)
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"backend='fast': {e}") from e
        enc = ref.with_backend(backend, cuda_graphs=cuda_graphs)  # same weights, no re-initialisation
        self._d[name] = enc
        return enc

    def drop_graphs(self):
        """Forget captured CUDA graphs (each shape keeps its own memory pool alive)."""
        enc = self._d.get("fast-graphs")
        if enc is not None:
            enc.release_graphs()

    def compiled(self, opts):
        if "compiled" not in self._d:
            ref = self.reference
            model = torch.compile(ref.model, mode=opts.get("compile_mode", "max-autotune"),
                                  backend=opts.get("compile_backend", "inductor"), dynamic=False)
            enc = copy.copy(ref)

            def encode_pixels(pixels, _m=model, _e=ref):
                return _m(pixels.to(device=_e.device, dtype=_e.dtype))

            enc.encode_pixels = encode_pixels  # encode_views calls self.encode_pixels
            self._d["compiled"] = enc
        return self._d["compiled"]


def _views_base():
    """``deepencoder.views.Views``: what preprocessing hands ``encode_views`` (importable without Pillow)."""
    from deepencoder.views import Views  # no Pillow needed

    return Views


def _views(global_pix, tile_pix, mode: E2EMode, cfg: DeepEncoderConfig):
    """Per-page views over slices of the batched tensors (what preprocessing hands ``encode_views``).
    OCR-2 always runs the real sides (its query tables fix them), so its views count tokens as upstream."""
    across, down = mode.tiles
    n = across * down
    if mode.family == "ocr2":
        size = (mode.tile_size * across, mode.tile_size * down)  # an image whose Gundam grid is (across, down)
        return [_views_base()(global_view=global_pix[i], tiles=tile_pix[i * n:(i + 1) * n], grid=(across, down),
                              size=size, mode="gundam", max_tiles=6, family="ocr2")
                for i in range(global_pix.shape[0])]
    real = mode.size == 1024 and mode.tile_size == 640
    cls = _views_base() if real else _shape_views_cls(cfg)
    size = (640 * across, 640 * down)
    return [cls(global_view=global_pix[i], tiles=tile_pix[i * n:(i + 1) * n], grid=(across, down), size=size,
                mode="gundam") for i in range(global_pix.shape[0])]


_SHAPE_VIEWS = {}


def _shape_views_cls(cfg):
    """Views whose token count follows the tensors' sizes (smoke sizes are not the real 1024/640)."""
    if "cls" not in _SHAPE_VIEWS:
        @dataclass
        class ShapeViews(_views_base()):
            @property
            def num_tokens(self) -> int:
                from deepencoder.modes import layout_token_count

                p = cfg.sam.patch_size
                _, g = grid_sizes(self.global_view.shape[-1], p)
                _, t = grid_sizes(self.tiles.shape[-1], p)
                cols, rows = self.grid
                return layout_token_count(g, t, cols, rows, self.family)

        _SHAPE_VIEWS["cls"] = ShapeViews
    return _SHAPE_VIEWS["cls"]


def e2e_case(mode: E2EMode, batch: int, pool: EncoderPool, opts: Dict[str, Any]) -> Case:
    """One end-to-end row set: ``batch`` images (or Gundam pages) of ``mode`` through ``pool``'s encoders.

    OCR-1 providers: reference, reference-compile, fast, fast-graphs (baseline ``reference``). OCR-2
    (``mode.family == "ocr2"``): upstream, upstream-compile, fast, fast-graphs (baseline ``upstream``: the
    reference with upstream's mask loop; see the module doc)."""
    cfg, device, dtype = pool.cfg, pool.device, pool.dtype
    if normalize_family(mode.family) != pool.family:
        raise ValueError(f"e2e mode {mode.name!r} is a {mode.family!r} mode; the encoder pool is {pool.family!r}")
    ocr2 = pool.family == "ocr2"
    S = mode.size
    n_params = opts.setdefault("_n_params", {})
    if pool.family not in n_params:
        n_params[pool.family] = fl.param_count(cfg)
    n_params = n_params[pool.family]
    elem = fl.elem_bytes(dtype)
    p = cfg.sam.patch_size
    view_flops = (lambda side: fl.ocr2_view_flops(side, cfg)) if ocr2 else (lambda side: fl.image_flops(side, cfg))
    tokens = None

    if mode.tiles is None:
        def make(seed, B, dt):
            g = _gen(seed)
            return ((torch.rand(B, 3, S, S, generator=g) * 2 - 1).to(device, dt),)

        def call(enc):
            return lambda pix: enc.encode_pixels(pix)

        flops = batch * view_flops(S)
        nbytes = fl.image_bytes(S, batch, elem, n_params, cfg.n_embed, p)
        shape = f"B{batch}-S{S}"
        prepare = None
        g = grid_sizes(S, p)[1]
        tokens = g * g
    else:
        n = mode.tiles[0] * mode.tiles[1]
        St = mode.tile_size

        def make(seed, B, dt):
            g = _gen(seed)
            glob = (torch.rand(B, 3, S, S, generator=g) * 2 - 1).to(device, dt)
            tiles = (torch.rand(B * n, 3, St, St, generator=g) * 2 - 1).to(device, dt)
            return (glob, tiles)

        def prepare(glob, tiles):
            return (_views(glob, tiles, mode, cfg),)

        def call(enc):
            return lambda views: enc.encode_views(views)

        flops = batch * (view_flops(S) + n * view_flops(St))
        nbytes = fl.image_bytes(S, batch, elem, n_params, cfg.n_embed, p) + \
            fl.image_bytes(St, batch, elem, 0, cfg.n_embed, p, views_per_item=n)
        shape = f"B{batch}-S{S}+{mode.tiles[0]}x{mode.tiles[1]}x{St}"
        if ocr2:  # per page: 144 per crop + 256 global + separator (1121 for 3 x 2)
            from deepencoder.modes import gundam_token_count

            tokens = gundam_token_count(mode.tiles[0], mode.tiles[1], "ocr2")

    def oracle(*inputs):
        if prepare is not None:
            inputs = prepare(*inputs)
        return call(pool.oracle)(*inputs)

    def fast_call(enc):
        f = call(enc)
        if not opts.get("e2e_torch_ops"):
            return f

        def torch_ops(*a):  # --smoke: the kill switch sends every op to its torch backend
            old = os.environ.get("DEEPENCODER_DISABLE_TRITON")
            os.environ["DEEPENCODER_DISABLE_TRITON"] = "1"
            try:
                return f(*a)
            finally:
                if old is None:
                    os.environ.pop("DEEPENCODER_DISABLE_TRITON", None)
                else:
                    os.environ["DEEPENCODER_DISABLE_TRITON"] = old
        return torch_ops

    def b_graphs():
        if device.type != "cuda":
            raise Unavailable("CUDA graphs: needs a CUDA device (this run: cpu)")
        return call(pool.variant("fast-graphs", "fast", cuda_graphs=True))

    fam = "DeepEncoder(family='ocr2', " if ocr2 else "DeepEncoder("
    smoke_note = ("; smoke: ops on their torch backends (DEEPENCODER_DISABLE_TRITON=1): the Triton "
                  "interpreter takes seconds per forward" if opts.get("e2e_torch_ops") else "")
    if ocr2:
        base = "upstream"
        provs = [
            Provider("upstream", lambda: call(pool.reference), prepare=prepare,
                     note="DeepEncoder(family='ocr2', backend='reference') + upstream's per-token Python mask loop "
                          "(token_type_ids on the CPU, [B,1,2n,2n] float mask), SDPA with repeated K/V"),
            Provider("upstream-compile", lambda: call(pool.compiled(opts)), prepare=prepare, compile=True,
                     note=_compile_note(opts) + " of the upstream model (mask loop included)"),
        ]
    else:
        base = "reference"
        provs = [
            Provider("reference", lambda: call(pool.reference), prepare=prepare,
                     note="DeepEncoder(backend='reference'): upstream-equivalent, materialised bias"),
            Provider("reference-compile", lambda: call(pool.compiled(opts)), prepare=prepare, compile=True,
                     note=_compile_note(opts) + " of the reference model"),
        ]
    provs += [
        Provider("fast", lambda: fast_call(pool.variant("fast", "fast")), prepare=prepare,
                 note=fam + "backend='fast')" + smoke_note),
        Provider("fast-graphs", b_graphs, prepare=prepare,
                 note=fam + "backend='fast', cuda_graphs=True): input copied in, output cloned"),
    ]
    extra = {"tokens_per_image": tokens if (ocr2 or mode.tiles is None) else None, "config": cfg.name,
             "family": pool.family}
    if ocr2:
        extra["max_batch"] = pool.max_batch
    return Case("e2e", "encoder", shape, batch, make, oracle, flops, nbytes, batch, mode=mode.name,
                baseline=base, providers=provs, cleanup=pool.drop_graphs, extra=extra)
