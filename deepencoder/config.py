"""Configuration of the two encoder families.

* ``"ocr1"``: DeepEncoder (DeepSeek-OCR): SAM-B + 16x compressor (-> 1024) + CLIP-L + projector.
  ``DeepEncoderConfig.deepseek_ocr()`` is the real encoder (upstream ``deepencoder/sam_vary_sdpa.py``
  ``build_sam_vit_b`` and ``clip_sdpa.py`` ``vit_model_cfg``).
* ``"ocr2"``: DeepEncoder V2 (DeepSeek-OCR 2): the same SAM-B trunk with the compressor ending in 896
  channels, then a Qwen2-0.5B decoder used as an encoder with learned "causal flow" queries
  (upstream ``deepencoderv2/qwen2_d2e.py``). ``DeepEncoderV2Config.deepseek_ocr2()``.

``small_test()`` of each keeps the structure (window blocks with edge padding, global blocks, the
4-conv compressor, CLIP with CLS / the flow encoder with GQA, projector) at a size the CPU and the
Triton interpreter can run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Tuple


@dataclass(frozen=True)
class SAMConfig:
    img_size: int = 1024  # pretraining size: pos_embed is (img_size/patch)^2
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    norm_eps: float = 1e-6
    # neck + net_2 + net_3 channels: 768 -> 256 -> 256 -> 512 -> 1024
    out_chans: int = 256
    net2_chans: int = 512
    net3_chans: int = 1024

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def pos_grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


@dataclass(frozen=True)
class CLIPConfig:
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    ffn_hidden_size: int = 4096
    layernorm_eps: float = 1e-5
    pre_layernorm_eps: float = 1e-5
    image_size: int = 224  # CLIP's own patch embedding (never run, but its weight loads)
    patch_size: int = 14

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class FlowConfig:
    """The Qwen2 decoder used as an encoder (DeepSeek-OCR 2), upstream ``build_qwen2_decoder_as_encoder``."""

    hidden_size: int = 896
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    intermediate_size: int = 4864
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    # learned query tables: view side -> number of queries (= compressor tokens of that view)
    query_sizes: Tuple[Tuple[int, int], ...] = ((768, 144), (1024, 256))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class DeepEncoderConfig:
    sam: SAMConfig = field(default_factory=SAMConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    n_embed: int = 1280  # projector output, LLM hidden size
    name: str = "deepseek-ocr"
    family: str = "ocr1"

    @property
    def projector_in(self) -> int:
        return self.clip.hidden_size + self.sam.net3_chans

    @staticmethod
    def deepseek_ocr() -> "DeepEncoderConfig":
        return DeepEncoderConfig()

    @staticmethod
    def small_test() -> "DeepEncoderConfig":
        """Reduced dims, real structure. Head dim stays 64 as in both real encoders.

        SAM: 4 blocks (window 14, global at 1 and 3), 2 heads of 64; pos grid 16 (so S=256 needs no
        resize, other S exercise the bicubic resize). Compressor 128 -> 32 -> 32 -> 48 -> 64.
        CLIP: 2 layers, hidden 64 (1 head of 64), pos table for a 16x16 grid + CLS (image_size 224,
        patch 14, as upstream), so g != 16 exercises the CLIP position resize.
        """
        sam = SAMConfig(img_size=256, embed_dim=128, depth=4, num_heads=2, global_attn_indexes=(1, 3),
                        out_chans=32, net2_chans=48, net3_chans=64)
        clip = CLIPConfig(hidden_size=64, num_layers=2, num_heads=1, ffn_hidden_size=128)
        return DeepEncoderConfig(sam=sam, clip=clip, n_embed=96, name="small-test")

    def replace(self, **kw) -> "DeepEncoderConfig":
        return dataclasses.replace(self, **kw)

    def validate(self) -> None:
        if self.sam.net3_chans != self.clip.hidden_size:
            raise ValueError(f"SAM net_3 output channels ({self.sam.net3_chans}) must equal CLIP hidden size "
                             f"({self.clip.hidden_size}): CLIP consumes the compressor output as its patch "
                             "embeddings")
        if self.sam.embed_dim % self.sam.num_heads or self.clip.hidden_size % self.clip.num_heads:
            raise ValueError("hidden sizes must be divisible by the head counts")


@dataclass(frozen=True)
class DeepEncoderV2Config:
    """DeepEncoder V2: SAM-B trunk (compressor -> 896) + Qwen2 flow encoder + Linear(896 -> 1280)."""

    sam: SAMConfig = field(default_factory=lambda: SAMConfig(net3_chans=896))
    flow: FlowConfig = field(default_factory=FlowConfig)
    n_embed: int = 1280
    name: str = "deepseek-ocr2"
    family: str = "ocr2"

    @property
    def projector_in(self) -> int:
        return self.flow.hidden_size

    @staticmethod
    def deepseek_ocr2() -> "DeepEncoderV2Config":
        return DeepEncoderV2Config()

    @staticmethod
    def small_test() -> "DeepEncoderV2Config":
        """Reduced dims, real structure: the small SAM trunk of ``DeepEncoderConfig.small_test`` with its
        compressor ending in 128 channels, a 2-layer flow encoder of hidden 128 with 2 query heads and
        1 KV head (GQA 2:1, head dim 64), MLP 256. The query tables keep their real lengths (144, 256):
        they are fixed by the view sizes, not by the width."""
        sam = SAMConfig(img_size=256, embed_dim=128, depth=4, num_heads=2, global_attn_indexes=(1, 3),
                        out_chans=32, net2_chans=48, net3_chans=128)
        flow = FlowConfig(hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=256)
        return DeepEncoderV2Config(sam=sam, flow=flow, n_embed=96, name="small-test-v2")

    def replace(self, **kw) -> "DeepEncoderV2Config":
        return dataclasses.replace(self, **kw)

    def num_queries(self, side: int) -> int:
        """Queries for a view of ``side`` pixels; only the two trained view sizes exist upstream."""
        for s, n in self.flow.query_sizes:
            if s == side:
                return n
        sides = ", ".join(str(s) for s, _ in self.flow.query_sizes)
        raise ValueError(f"DeepSeek-OCR 2 encodes views of side {sides} only (learned query tables); got {side}")

    def validate(self) -> None:
        if self.sam.net3_chans != self.flow.hidden_size:
            raise ValueError(f"SAM net_3 output channels ({self.sam.net3_chans}) must equal the flow encoder's "
                             f"hidden size ({self.flow.hidden_size})")
        f = self.flow
        if f.hidden_size % f.num_heads or f.num_heads % f.num_kv_heads:
            raise ValueError("flow hidden size must be divisible by the heads, heads by the KV heads")


FAMILIES = ("ocr1", "ocr2")


def family_config(family: str, small: bool = False):
    """The real (or ``small``) config of a model family: ``"ocr1"`` DeepSeek-OCR, ``"ocr2"`` DeepSeek-OCR 2."""
    fam = normalize_family(family)
    if fam == "ocr1":
        return DeepEncoderConfig.small_test() if small else DeepEncoderConfig.deepseek_ocr()
    return DeepEncoderV2Config.small_test() if small else DeepEncoderV2Config.deepseek_ocr2()


_FAMILY_ALIASES = {"ocr1": "ocr1", "deepseek-ocr": "ocr1", "v1": "ocr1", "ocr2": "ocr2", "deepseek-ocr2": "ocr2",
                   "deepseek-ocr-2": "ocr2", "v2": "ocr2"}


def normalize_family(family) -> str:
    if not isinstance(family, str) or family.lower() not in _FAMILY_ALIASES:
        raise ValueError(f"unknown model family {family!r}: choose 'ocr1' (DeepSeek-OCR) or 'ocr2' (DeepSeek-OCR 2)")
    return _FAMILY_ALIASES[family.lower()]


def grid_sizes(image_size: int, patch_size: int = 16) -> Tuple[int, int]:
    """(G, g) for a square input of side ``image_size``: SAM patch grid and compressed token grid.

    g follows PyTorch's conv arithmetic for two stride-2, pad-1, kernel-3 convs: floor((G-1)/2)+1 twice,
    i.e. ceil(G/4) in two steps (G=40 -> 20 -> 10; G=80 -> 40 -> 20).
    """
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    G = image_size // patch_size
    return G, token_grid(G)


def token_grid(G: int) -> int:
    """Compressed token grid side g for a SAM patch grid side G: two stride-2, pad-1, kernel-3 convs,
    floor((G-1)/2)+1 twice (PyTorch's conv arithmetic), i.e. ceil(G/4) (G=40 -> 10, 48 -> 12, 64 -> 16)."""
    half = (G - 1) // 2 + 1  # after the first conv
    return (half - 1) // 2 + 1
