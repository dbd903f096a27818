"""OCR-2 additions to the benchmark suite: the V2 FLOP model against SPEC_V2 "Cost", and the per-op
flow-attention rows (every provider checked against the float64 oracle, the wrong causal alignment caught
by the suite's own correctness gate). CPU; the Triton row runs under the interpreter."""

import pytest
import torch

from bench import flops as fl


def test_ocr2_flop_model_matches_spec_v2():
    """SPEC_V2 "Cost": 1024 view ~ 665 G MACs (SAM 470, Qwen2 195), 768 tile ~ 347 G (SAM 240, Qwen2 107)."""
    for S, total, sam, qwen in ((1024, 665e9, 470e9, 195e9), (768, 347e9, 240e9, 107e9)):
        m = fl.ocr2_view_macs(S)
        q = m["qwen2_linear"] + m["qwen2_attn"]
        assert abs(m["total"] - total) / total < 0.01, (S, m["total"] / 1e9)
        assert abs(m["sam"] - sam) / sam < 0.01, (S, m["sam"] / 1e9)
        assert abs(q - qwen) / qwen < 0.01, (S, q / 1e9)
    # 3x2-tile page ~ 2.75 T
    page = fl.ocr2_view_macs(1024)["total"] + 6 * fl.ocr2_view_macs(768)["total"]
    assert abs(page - 2.75e12) / 2.75e12 < 0.01


def test_flow_attention_counts():
    n = 256
    assert fl.flow_pairs(n) == 2 * n * n + n * (n + 1) // 2
    assert fl.flow_pairs(n, dense=True) == 4 * n * n
    assert fl.flow_attention_macs(2, n, 14, 64) == 2 * 14 * 2 * fl.flow_pairs(n) * 64
    # the sparse count is what the kernel computes: 5/8 (+ the diagonal) of upstream's dense work
    r = fl.flow_attention_macs(1, n) / fl.flow_attention_macs(1, n, dense=True)
    assert 0.625 < r < 0.627
    assert fl.flow_attention_bytes(1, n, 14, 2, 64, 2) == 2 * 512 * (18 * 64 + 14 * 64) + 8 * 512 * 64


@pytest.mark.interpreter
def test_flow_attention_rows_pass_the_gate_and_top_left_fails_it():
    from bench.cases import flow_attention_case
    from bench.measure import Timer
    from bench.suite import Runner

    dev = torch.device("cpu")
    case = flow_attention_case(5, 1, 4, 2, 64, dev, torch.float32, {})
    assert [p.name for p in case.providers] == ["upstream", "reference-compile", "flex", "library", "fast",
                                                "fast-graphs", "flash-nobias"]
    timer = Timer(dev, target_ms=1.0, min_reps=1, warmup=0)
    runner = Runner(dev, torch.float32, timer, {"input_sets": 3, "compile_backend": "eager"}, {"device": "cpu"},
                    {"tflops": 1.0, "gbps": 1.0})
    runner.run_case(case, [p for p in case.providers if p.name != "reference-compile"])
    by = {r["provider"]: r for r in runner.rows}
    for p in ("upstream", "flex", "library", "fast", "flash-nobias"):
        assert by[p]["status"] == "ok" and by[p]["check"] == "pass", (p, by[p].get("reason"))
        assert by[p]["rel_err"] < 1e-5, (p, by[p]["rel_err"])
    assert by["fast-graphs"]["status"] == "unavailable"
    # a provider with SDPA's top-left causal alignment is caught by the suite's gate and never timed
    from deepencoder.kernels.flow_attention import flow_attention_library

    from bench.cases import Provider

    def top_left():
        return lambda qkv, c, s: flow_attention_library(qkv, 5, 4, 2, c, s, use_flash=False,
                                                        sdpa_causal_top_left=True)[0]

    runner.run_case(case, [Provider("library-top-left", top_left)])
    bad = runner.rows[-1]
    assert bad["status"] == "failed" and bad["check"] == "fail" and bad["ms_p50"] is None
