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


# --------------------------------------------------------------------------------------------------
# End to end: the V2 FLOP model per config, the matrix, the smoke rows, the upstream baseline, reports
# --------------------------------------------------------------------------------------------------


def test_ocr2_flop_model_follows_the_v2_config():
    """A DeepEncoderV2Config counts its own dims: the real one equals the default model, the small one its
    2-layer flow encoder (hand count) and its own projector."""
    from deepencoder.config import DeepEncoderV2Config

    real, small = DeepEncoderV2Config.deepseek_ocr2(), DeepEncoderV2Config.small_test()
    for S in (1024, 768):
        assert fl.ocr2_view_macs(S, real) == fl.ocr2_view_macs(S)
    m = fl.ocr2_view_macs(768, small)
    L, f = 2 * 144, small.flow
    kv = f.num_kv_heads * f.head_dim
    assert m["qwen2_linear"] == f.num_layers * L * (2 * 128 ** 2 + 2 * 128 * kv + 3 * 128 * f.intermediate_size)
    assert m["projector"] == 144 * 128 * small.n_embed
    assert fl.ocr2_page_flops(6, cfg=small) == pytest.approx(
        2 * (fl.ocr2_view_macs(1024, small)["total"] + 6 * m["total"]))
    assert fl.param_count(small) < fl.param_count(real) / 100  # the V2 module, not V1's


def _gpu_suite_ocr2_args():
    """The ``python -m bench`` arguments of bench/gpu_suite.sh's OCR-2 stage, shell variables at their defaults."""
    import os
    import re
    import shlex

    path = os.path.join(os.path.dirname(fl.__file__), "gpu_suite.sh")
    text = open(path).read().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("stage bench-ocr2"))
    line = line.split("-m bench", 1)[1]
    line = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", line)  # ${VAR:-default} -> default
    line = re.sub(r"\$\(\(.*?\)\)", "190", line).replace('"$OUT"', "/tmp/out")
    return shlex.split(line)


def test_gpu_suite_ocr2_stage_measures_the_target_rows_first():
    """bench/gpu_suite.sh's OCR-2 stage: 8 pages of 1024 + 3x2x768 (1121 tokens each) first, its compile row
    (default mode, inductor) right after it, then the global view alone at 1, 8, 32; no op rows."""
    from bench.__main__ import options, parser
    from bench.suite import build_matrix, compile_wanted

    args = parser().parse_args(_gpu_suite_ocr2_args())
    opts, _ = options(args)
    assert opts["compile_inline"] and opts["compile_mode"] == "default" and opts["compile_backend"] == "inductor"
    cases = build_matrix(opts, torch.device("cpu"), torch.bfloat16)
    assert [(c.mode, c.batch) for c in cases] == [("ocr2-gundam", 8), ("ocr2-base", 1), ("ocr2-base", 8),
                                                  ("ocr2-base", 32)]
    assert all(c.extra["family"] == "ocr2" and c.kind == "e2e" for c in cases)
    page = cases[0]
    assert page.shape == "B8-S1024+3x2x768" and page.extra["tokens_per_image"] == 1121 and page.images == 8
    assert page.flops == pytest.approx(8 * fl.ocr2_page_flops(6)) and page.baseline == "upstream"
    assert [p.name for p in page.providers] == ["upstream", "upstream-compile", "fast", "fast-graphs"]
    assert cases[1].flops == pytest.approx(fl.ocr2_view_flops(1024)) and cases[1].extra["tokens_per_image"] == 256
    assert [c.key for c in cases if compile_wanted(c, opts["compile"], opts)] == [page.key]


def test_families_side_by_side_never_share_a_mode_or_pool():
    from bench.suite import build_matrix

    opts = {"ops": (), "modes": ("base", "ocr2-base"), "batches": (1, 8), "ocr2_batches": (1,)}
    cases = build_matrix(opts, torch.device("cpu"), torch.bfloat16)
    assert [(c.mode, c.batch, c.extra["family"], c.extra["config"]) for c in cases] == [
        ("base", 1, "ocr1", "deepseek-ocr"), ("ocr2-base", 1, "ocr2", "deepseek-ocr2"), ("base", 8, "ocr1", "deepseek-ocr")]
    assert cases[0].baseline == "reference" and cases[1].baseline == "upstream"
    assert [p.name for p in cases[0].providers][:2] == ["reference", "reference-compile"]
    with pytest.raises(ValueError, match="unknown end-to-end mode"):
        build_matrix({**opts, "modes": ("ocr2-large",)}, torch.device("cpu"), torch.bfloat16)


def test_upstream_row_runs_upstreams_mask_loop_and_fast_does_not(monkeypatch):
    """``upstream`` builds the mask with upstream's per-token loop on every forward; the fast encoder shares
    the module (same weights) but never takes that path; the two agree."""
    import deepencoder.models.flow as flow
    from bench.e2e import E2EMode, EncoderPool, e2e_case
    from deepencoder.config import DeepEncoderV2Config

    calls = []
    orig = flow.flow_mask_upstream_loop

    def counting(n, batch, dtype, device=None):
        calls.append((n, batch))
        return orig(n, batch, dtype, device)

    monkeypatch.setattr(flow, "flow_mask_upstream_loop", counting)
    monkeypatch.setenv("DEEPENCODER_DISABLE_TRITON", "1")
    pool = EncoderPool(DeepEncoderV2Config.small_test(), torch.device("cpu"), torch.float32)
    case = e2e_case(E2EMode("t", 768, family="ocr2"), 1, pool, {})  # a 768 view alone: 144 queries
    by = {p.name: p for p in case.providers}
    (x,) = case.make(3, 1, torch.float32)
    up = by["upstream"].build()(x)
    assert calls == [(144, 1)]
    fast = by["fast"].build()(x)
    assert calls == [(144, 1)] and pool.variant("fast", "fast").model is pool.reference.model
    assert torch.isfinite(up).all() and (fast - up).norm() / up.norm() < 1e-4


@pytest.mark.xdist_group("bench")
def test_smoke_has_ocr2_e2e_rows_that_passed_and_carry_the_family(bench_smoke_run):
    from bench import report
    from deepencoder.config import DeepEncoderV2Config

    out, rows = bench_smoke_run
    e2e = [r for r in rows if r["kind"] == "e2e"]
    o2 = {(r["mode"], r["provider"]): r for r in e2e if r.get("family") == "ocr2"}
    for r in e2e:  # every end-to-end row says its family, and the mode name agrees
        assert r.get("family") in ("ocr1", "ocr2") and (("ocr2" in r["mode"]) == (r["family"] == "ocr2")), r["mode"]
    for key in [("smoke-ocr2-base", "upstream"), ("smoke-ocr2-base", "fast"), ("smoke-ocr2-gundam", "upstream"),
                ("smoke-ocr2-gundam", "fast"), ("smoke-ocr2-gundam", "upstream-compile")]:
        r = o2[key]
        assert r["status"] == "ok" and r["check"] == "pass" and r["rel_err"] <= r["tol"], (key, r.get("reason"))
        assert r["config"] == "small-test-v2" and r["ms_p50"] > 0
    assert o2[("smoke-ocr2-gundam", "fast-graphs")]["status"] == "unavailable"
    page = o2[("smoke-ocr2-gundam", "fast")]
    assert page["shape"] == "B1-S1024+2x1x768" and page["tokens_per_image"] == 545
    assert page["flops"] == pytest.approx(fl.ocr2_page_flops(2, cfg=DeepEncoderV2Config.small_test()))
    assert "flow_attention=torch" in page["op_backends"] and "add_rmsnorm=torch" in page["op_backends"]
    from bench.schema import row_errors

    assert row_errors(page, engine="builtin") == [] and row_errors({**page, "family": "ocr3"}, engine="builtin")
    assert "mask loop" in o2[("smoke-ocr2-gundam", "upstream")]["note"]
    assert not any(r["provider"].startswith("upstream") for r in e2e if r["family"] == "ocr1")
    md = (out / "smoke.md").read_text()
    assert "### DeepSeek-OCR 2 end to end" in md and "| smoke-ocr2-gundam | B1-S1024+2x1x768 | 1 |" in md
    short = report.short_table(rows)
    assert "DeepSeek-OCR 2 end to end" in short and "pg/s" in short and "CPU timing" in short


def _gpu_row(mode, provider, ms, batch=8, family="ocr2", **kw):
    r = {"kind": "e2e", "op": "encoder", "mode": mode, "shape": f"B{batch}-S1024+3x2x768", "batch": batch,
         "provider": provider, "dtype": "bfloat16", "status": "ok" if ms else "skipped", "ms_p50": ms,
         "images_per_s": batch / ms * 1e3 if ms else None, "timing": "cuda-events", "family": family,
         "device_kind": "cuda", "device": "H200", "git_commit": "abc", "timestamp": "t"}
    r.update(kw)
    return r


def test_ocr2_summary_and_readme_keep_the_families_apart(tmp_path):
    import json

    from bench import readme, report

    rows = [_gpu_row("ocr2-gundam", "upstream", 400.0), _gpu_row("ocr2-gundam", "upstream-compile", 200.0),
            _gpu_row("ocr2-gundam", "fast", 160.0), _gpu_row("ocr2-gundam", "fast-graphs", 150.0),
            _gpu_row("base", "reference", 80.0, family="ocr1", shape="B8-S1024"),
            _gpu_row("base", "fast", 20.0, family="ocr1", shape="B8-S1024")]
    lines = "\n".join(report.ocr2_summary_lines(rows))
    # best = fast-graphs 150 ms: 400/150 = 2.67x eager (target 2.5: met), 200/150 = 1.33x compile (1.3: met)
    assert "2.67x" in lines and "1.33x" in lines and "53.3 pg/s" in lines
    assert "met vs upstream," in lines and "NOT met" not in lines and "base B8" not in lines
    slow = [dict(r, ms_p50=190.0, images_per_s=8 / 0.19) if r["provider"] == "fast-graphs" else r for r in rows]
    assert "NOT met vs upstream-compile" in "\n".join(report.ocr2_summary_lines(slow))
    res = tmp_path / "results"
    res.mkdir()
    (res / "h200.json").write_text(json.dumps(rows))
    block = readme.render(str(res))
    head = block.index("##### DeepSeek-OCR 2 end to end")
    assert "| ocr2-gundam | 8 |" in block[head:] and "| ocr2-gundam" not in block[:head]
    assert "| base | 8 | 100.0 | 400.0 | 4.00x |" in block[:head] and "| 2.67x | 1.33x |" in block[head:]
