"""The public encoder: images in, LLM-ready vision tokens out.

Follow one image from pixels to tokens here::

    image ─ preprocess (family + mode: resize / pad / tiles, normalise)            deepencoder.preprocess
          ─ encode_pixels  ocr1: SAM-B → 16× compressor → CLIP-L → projector      models/ocr1.py, fast/ocr1.py
                           ocr2: SAM-B → 16× compressor → Qwen2 flow → projector   models/ocr2.py, fast/ocr2.py
          ─ layout         ocr1: tiles stitched + newlines, global + newlines, separator   models.layout_tokens
                           ocr2: crops, global, separator (no newlines)                    models.layout_tokens_v2

Two model families share one package: ``"ocr1"`` (DeepSeek-OCR) and ``"ocr2"`` (DeepSeek-OCR 2). The
family is given (``family=``), taken from ``config``, or detected from the checkpoint's keys.

:class:`DeepEncoder` owns one set of weights (one ``state_dict``, loaded once) and runs it on either
backend: ``"reference"`` (upstream-faithful PyTorch, the correctness oracle) or ``"fast"`` (Triton
kernels + FlashAttention). ``"auto"`` is fast on CUDA, reference elsewhere.

:meth:`DeepEncoder.encode` batches across requests: every Gundam tile of every image goes into one
SAM/CLIP batch, global views are grouped by size, and results come back per image in input order.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .config import family_config, normalize_family
from .models import check_pixels, layout_tokens, layout_tokens_v2, reference_model
from .modes import DEFAULT_MODE, get_mode
from .weights import FAMILY_NAMES, CheckpointError, checkpoint_family, init_random_, load_checkpoint

BACKENDS = ("auto", "reference", "fast")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class RandomWeightsWarning(UserWarning):
    """A :class:`DeepEncoder` was built without weights: its outputs are meaningless."""


RANDOM_WEIGHTS_WARNING = ("deepencoder: no --weights given: running with SEEDED RANDOM weights. Token counts and "
                          "shapes are real; the output values are MEANINGLESS.")


def resolve_dtype(dtype) -> torch.dtype:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class EncodedImage:
    """One image's encoder output, in the order the LLM consumes it."""

    tokens: torch.Tensor  # [T, n_embed]
    mode: str
    grid: Tuple[int, int]  # Gundam tiles (across, down); (1, 1) without tiles
    num_tokens: int
    seconds: float = 0.0
    size: Tuple[int, int] = (0, 0)  # original (width, height)
    source: str = ""
    family: str = "ocr1"
    extra: Dict[str, object] = field(default_factory=dict)





def resolve_family(family=None, config=None, weights=None) -> str:
    """The model family from what was given: ``family``, ``config.family``, the checkpoint's keys (in that
    order of authority), defaulting to ``"ocr1"``. Conflicts are one-line errors naming both sides."""
    fam = normalize_family(family) if family is not None else None
    if config is not None:
        cf = getattr(config, "family", "ocr1")
        if fam is not None and fam != cf:
            raise ValueError(f"family {fam!r} does not match the config's family {cf!r}")
        fam = cf
    if weights is not None:
        wf = checkpoint_family(weights)
        if fam is not None and fam != wf:
            raise CheckpointError(f"{weights} is a {FAMILY_NAMES[wf]} checkpoint, but model family {fam!r} was requested: "
                                  f"use --model {wf} (or leave the family to auto-detection)")
        fam = wf
    return fam or "ocr1"


class DeepEncoder:
    """The vision encoder of DeepSeek-OCR (``family="ocr1"``) or DeepSeek-OCR 2 (``"ocr2"``), with a choice
    of backend.

    Args:
        config: :class:`DeepEncoderConfig` / :class:`DeepEncoderV2Config` (default: the family's real encoder).
        weights: path to a checkpoint (safetensors file, sharded index json, or folder), in any key scheme
            of either family; the family is detected from its keys.
            None: seeded random weights (``random_weights`` is True; outputs are meaningless).
        family: "ocr1" | "ocr2" (None: from ``config``, else from the checkpoint, else "ocr1").
        device: "cuda", "cpu", ... (default: cuda when available).
        dtype: parameter/activation dtype (default: bfloat16 on CUDA, float32 on CPU).
        backend: "auto" | "reference" | "fast".
        cuda_graphs: capture the fast path per input shape with CUDA graphs (CUDA only).
        max_batch: largest batch handed to the model at once.
        op_backend: the kernels' backend inside the fast path ("auto" | "triton" | "torch"); "torch" runs
            the fast path's own code on the ops' PyTorch references (for testing the plumbing anywhere).
    """

    def __init__(self, config=None, weights: Optional[str] = None, device=None, dtype=None,
                 backend: str = "auto", seed: int = 0, strict: bool = True, cuda_graphs: bool = False,
                 max_batch: int = 32, op_backend: str = "auto", family: Optional[str] = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.family = resolve_family(family, config, weights)
        self.config = config or family_config(self.family)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
        if cuda_graphs and self.device.type != "cuda":  # a flag that cannot act must not be dropped silently
            raise ValueError(f"cuda_graphs=True needs a CUDA device, got device {self.device.type!r}")
        if cuda_graphs and backend == "reference":
            raise ValueError("cuda_graphs=True applies to the fast backend only, got backend='reference'")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.dtype = resolve_dtype(dtype) or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model = reference_model(self.config)
        self.random_weights = weights is None
        if weights is None:
            init_random_(self.model, seed)
        else:
            load_checkpoint(self.model, weights, strict=strict)
        self.model.to(device=self.device, dtype=self.dtype).eval()
        self.max_batch = max_batch
        self.cuda_graphs = cuda_graphs
        self.op_backend = op_backend
        self.requested_backend = backend
        self.backend = self._resolve_backend(backend)
        self._fast = None
        if self.random_weights:  # the CLI prints its own notice and filters this category
            warnings.warn(RANDOM_WEIGHTS_WARNING.replace("no --weights given", "no weights given"),
                          RandomWeightsWarning, stacklevel=2)

    # ------------------------------------------------------------------ backends
    def _resolve_backend(self, backend: str) -> str:
        if backend == "reference":
            return "reference"
        if backend == "auto":
            return "fast" if self.device.type == "cuda" else "reference"
        if self.op_backend != "torch":  # "fast" requested explicitly: the kernels must be able to run here
            from .fast import check_runnable

            check_runnable(self.device, self.dtype)
        return "fast"

    def with_backend(self, backend: str, cuda_graphs: Optional[bool] = None,
                     op_backend: Optional[str] = None) -> "DeepEncoder":
        """Another view of this encoder on a different backend: the same module and weights (nothing is
        copied or re-initialised), its own fast-path state (e.g. captured CUDA graphs)."""
        import copy

        enc = copy.copy(self)
        enc._fast = None
        if cuda_graphs is not None:
            enc.cuda_graphs = cuda_graphs
        if op_backend is not None:
            enc.op_backend = op_backend
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        enc.requested_backend = backend
        enc.backend = enc._resolve_backend(backend)
        return enc

    def release_graphs(self) -> None:
        """Drop the fast path's captured CUDA graphs (each input shape holds a memory pool)."""
        self._fast = None

    @property
    def fast_model(self):
        if self._fast is None:
            from .fast import fast_model

            self._fast = fast_model(self.model, cuda_graphs=self.cuda_graphs, op_backend=self.op_backend)
        return self._fast

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B,3,S,S]`` normalised pixels -> projected tokens ``[B, g^2, n_embed]`` (no layout)."""
        check_pixels(pixels, self.config)
        # Non-finite pixels are an input error, non-finite outputs a model one. Host pixels are checked here;
        # for device pixels both checks share one host sync after the forward (none between the async
        # host->device copy and the launches).
        given = pixels
        pix_bad = ~torch.isfinite(given).all()
        if not given.is_cuda and bool(pix_bad):
            self._raise_bad_pixels(given)
        if self.family == "ocr2":
            self.config.num_queries(pixels.shape[-1])  # one-line error for a side without a query table
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        out = self.fast_model(pixels) if self.backend == "fast" else self.model(pixels)
        in_bad, out_bad = torch.stack([pix_bad.to(out.device), ~torch.isfinite(out).all()]).tolist()
        if in_bad:
            self._raise_bad_pixels(given)
        if out_bad:  # e.g. fp16 overflow, or corrupt weights set after loading
            bad = int((~torch.isfinite(out)).sum())
            raise FloatingPointError(f"the encoder produced {bad} non-finite token value(s) of {out.numel()} "
                                     f"(backend {self.backend}, dtype {str(self.dtype).replace('torch.', '')}); "
                                     "refusing to return them")
        return out

    @staticmethod
    def _raise_bad_pixels(pixels: torch.Tensor):
        bad = int((~torch.isfinite(pixels)).sum())
        raise ValueError(f"pixels hold {bad} non-finite value(s) (NaN/Inf) of {pixels.numel()}; "
                         "the encoder would return NaN tokens")

    # ------------------------------------------------------------------ images -> tokens
    @torch.inference_mode()
    def encode(self, images: Union[Sequence, object], mode: Union[str, Sequence[str], None] = None,
               max_tiles: Optional[int] = None, engine: str = "auto") -> List[EncodedImage]:
        """Encode images (PIL images, paths or uint8 arrays) into LLM-ready token sequences.

        A PDF path (or ``doc.pdf:3-7``) gives one result per page, rendered at 144 dpi
        (:mod:`deepencoder.sources`); so does a multi-page TIFF.

        ``mode`` is one mode for all images or one per image (None: the family's default, "base" for
        ocr1, "gundam" for ocr2); ``max_tiles`` None: the family's default (9 ocr1, 6 ocr2). All views are
        batched across images: tiles/crops of every image in one batch, global views grouped by size.
        """
        from .preprocess import preprocess_batch

        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("no images to encode")
        if mode is None:
            mode = DEFAULT_MODE[self.family]
        modes = [mode] * len(images) if isinstance(mode, str) else list(mode)
        if len(modes) != len(images):
            raise ValueError(f"got {len(modes)} modes for {len(images)} images")
        from .sources import expand_images

        images, modes, labels = expand_images(images, modes)  # a PDF / multi-page TIFF path: its pages
        modes = [get_mode(m, family=self.family).name for m in modes]
        t0 = time.perf_counter()
        # one multi-threaded C++ call for all images (Python/PIL path when the extension is missing);
        # pixels are made directly in the model dtype (the C++ engine writes bf16/fp16 itself)
        views = preprocess_batch(images, modes, max_tiles=max_tiles, engine=engine, family=self.family,
                                 dtype=self.dtype if self.dtype in (torch.float32, torch.bfloat16, torch.float16)
                                 else torch.float32)
        t_pre = time.perf_counter() - t0
        return self.encode_views(views, sources=labels, t_pre=t_pre)

    @torch.inference_mode()
    def encode_views(self, views, sources: Optional[List[str]] = None, t_pre: float = 0.0) -> List[EncodedImage]:
        """Encode preprocessed :class:`deepencoder.preprocess.Views` with cross-request batching."""
        t0 = time.perf_counter()
        # Group every view by side: (S) -> list of (image index, tile index or -1, tensor).
        groups: Dict[int, List[Tuple[int, int, torch.Tensor]]] = {}
        for i, v in enumerate(views):
            groups.setdefault(v.global_view.shape[-1], []).append((i, -1, v.global_view))
            if v.tiles is not None:
                for t in range(v.tiles.shape[0]):
                    groups.setdefault(v.tiles.shape[-1], []).append((i, t, v.tiles[t]))
        outputs: Dict[Tuple[int, int], torch.Tensor] = {}
        for _, items in sorted(groups.items()):
            for s in range(0, len(items), self.max_batch):
                chunk = items[s:s + self.max_batch]
                views_ = [x[2] for x in chunk]
                if self.device.type == "cuda" and not views_[0].is_cuda:
                    # stack into page-locked memory so the host->device copy is a real async DMA
                    host = torch.empty((len(views_),) + tuple(views_[0].shape), dtype=views_[0].dtype,
                                       pin_memory=True)
                    pix = torch.stack(views_, out=host)
                else:
                    pix = torch.stack(views_)
                pix = pix.to(device=self.device, dtype=self.dtype, non_blocking=True)
                out = self.encode_pixels(pix)
                for (i, t, _), o in zip(chunk, out):
                    outputs[(i, t)] = o
        sep = self.model.view_seperator
        results = []
        elapsed = time.perf_counter() - t0
        per_image = (elapsed + t_pre) / max(len(views), 1)
        for i, v in enumerate(views):
            tiles = None
            if v.tiles is not None:
                tiles = torch.stack([outputs[(i, t)] for t in range(v.tiles.shape[0])])
            if getattr(v, "family", "ocr1") != self.family:
                raise ValueError(f"views made for family {v.family!r} given to a {self.family!r} encoder")
            if self.family == "ocr2":
                tok = layout_tokens_v2(outputs[(i, -1)], sep, tiles)
            else:
                tok = layout_tokens(outputs[(i, -1)], self.model.image_newline, sep, tiles, tuple(v.grid))
            if tok.shape[0] != v.num_tokens:  # the layout and the counting helper must agree
                raise AssertionError(f"token layout produced {tok.shape[0]} tokens, expected {v.num_tokens}")
            results.append(EncodedImage(tokens=tok, mode=v.mode, grid=tuple(v.grid), num_tokens=tok.shape[0],
                                        seconds=per_image, size=tuple(v.size), family=self.family,
                                        source=(sources[i] if sources else "")))
        return results

    def warn_if_random(self) -> None:
        if self.random_weights:
            warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=2)
