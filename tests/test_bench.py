"""The benchmark suite: smoke run end to end, row schema, --compare math, the correctness gate, FLOP model,
README block. CPU only (the smoke run times Triton kernels under the interpreter at a 6x6 grid)."""

import json
import os

import pytest
import torch

from bench import flops as fl
from bench import report
from bench.schema import row_errors, validate_rows

pytestmark = pytest.mark.xdist_group("bench")


# --------------------------------------------------------------------------------------------------
# FLOP model against the cost budget of one image (bench/flops.py's module doc)
# --------------------------------------------------------------------------------------------------


def test_flop_model_matches_spec_at_1024():
    m = fl.image_macs(1024)
    spec = {"sam_linear": 348e9, "sam_global_attn": 103e9, "sam_window_attn": 12e9, "clip": 81e9, "convs": 8e9}
    rel = {"sam_linear": 0.01, "sam_global_attn": 0.03, "sam_window_attn": 0.06, "clip": 0.01, "convs": 0.03}
    for k, v in spec.items():
        assert abs(m[k] - v) / v < rel[k], f"{k}: {m[k] / 1e9:.1f} G MACs, budget {v / 1e9:.0f} G"
    total_tflop = 2 * m["total"] / 1e12
    assert abs(total_tflop - 1.1) / 1.1 < 0.03, total_tflop
    assert fl.image_flops(1024) == pytest.approx(2 * m["total"])


@pytest.mark.parametrize("S,tflop", [(512, 0.24), (640, 0.38), (1280, 1.9)])
def test_flop_model_other_sizes(S, tflop):
    assert fl.image_flops(S) / 1e12 == pytest.approx(tflop, rel=0.03)


def test_flop_model_pieces():
    # window attention at G=64: 25 windows of 196 tokens (padding counted, as upstream computes it)
    assert fl.sam_attention_macs(1, 64, 12, 64, 14) == 25 * 12 * (2 * 196 ** 2 * 64 + 2 * 196 * 14 * 64)
    assert fl.sam_attention_macs(2, 64, 12, 64, 0) == 2 * 12 * (2 * 4096 ** 2 * 64 + 2 * 4096 * 64 * 64)
    assert fl.clip_attention_macs(1, 257, 16, 64) == 16 * 2 * 257 ** 2 * 64
    assert fl.gundam_flops((2, 3)) == pytest.approx(fl.image_flops(1024) + 6 * fl.image_flops(640))
    # the 384 MiB bf16 bias per image per global block at S=1024: 12 heads x 4096^2 x 2 bytes
    assert fl.upstream_bias_bytes(1, 64, 12, 0, 2) == 384 * 2 ** 20


# --------------------------------------------------------------------------------------------------
# Smoke run: every code path, files, schema
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def smoke_run(bench_smoke_run):
    """The one ``python -m bench --smoke`` run of the session (conftest.py; tests/test_bench_ocr2.py reads it too)."""
    return bench_smoke_run


def test_smoke_writes_every_output(smoke_run):
    out, rows = smoke_run
    for f in ("smoke.json", "smoke.md", "smoke-throughput.png", "smoke-roofline.png"):
        assert (out / f).stat().st_size > 0, f
    md = (out / "smoke.md").read_text()
    assert "CPU timing" in md and "| e2e |" in md and "| op |" in md


def test_smoke_rows_validate_and_carry_provenance(smoke_run):
    _, rows = smoke_run
    validate_rows(rows, engine="builtin")
    for r in rows:
        for k in ("device", "driver", "torch", "triton", "flash_attn", "git_commit", "timestamp", "host"):
            assert r.get(k), (k, r["op"], r["provider"])
        assert r["timing"].startswith("cpu-perf_counter")


def test_smoke_covers_the_matrix(smoke_run):
    _, rows = smoke_run
    kinds = {(r["kind"], r["op"]) for r in rows}
    for k in [("peak", "copy"), ("op", "sam_window_attention"), ("op", "sam_global_attention"),
              ("op", "compressor"), ("op", "clip_attention"), ("e2e", "encoder")]:
        assert k in kinds, k
    ok = {(r["op"], r.get("mode"), r["provider"]) for r in rows if r["status"] == "ok"}
    for op in ("sam_window_attention", "sam_global_attention", "compressor", "clip_attention"):
        assert (op, "smoke", "upstream") in ok and (op, "smoke", "reference-compile") in ok
    # the Triton kernels ran (interpreter) and passed the gate
    for op in ("sam_window_attention", "sam_global_attention", "compressor"):
        assert (op, "smoke", "fast") in ok
    assert ("encoder", "smoke-gundam", "fast") in ok and ("encoder", "smoke-tiny", "reference-compile") in ok
    graphs = [r for r in rows if r["provider"] == "fast-graphs"]
    assert graphs and all(r["status"] == "unavailable" and "CUDA" in r["reason"] for r in graphs)
    for r in rows:
        if r["status"] == "ok" and r["kind"] != "peak":
            assert r["check"] == "pass" and r["rel_err"] <= r["tol"]
            assert r["ms_p20"] <= r["ms_p50"] <= r["ms_p80"] and r["input_sets"] >= 3


def test_report_regenerates_from_json(smoke_run, tmp_path, capsys):
    from bench.__main__ import main

    out, rows = smoke_run
    p = tmp_path / "again.json"
    report.write_json(rows, str(p))
    assert main(["--report", str(p)]) == 0
    assert (tmp_path / "again.md").exists() and (tmp_path / "again-roofline.png").exists()
    assert main(["--validate", str(p)]) == 0
    assert "rows valid" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


def _row(**kw):
    r = {"schema_version": 1, "kind": "op", "op": "x", "mode": None, "shape": "B1", "batch": 1, "provider": "fast",
         "dtype": "bfloat16", "status": "ok", "reason": None, "timing": "cuda-events", "ms_p20": 1.0,
         "ms_p50": 1.5, "ms_p80": 2.0, "flops": 1e9, "bytes": 1e6, "images_per_s": 666.0, "tflops": 0.6,
         "gbps": 0.6, "peak_tflops": 700.0, "peak_gbps": 3000.0, "device": "H100", "device_kind": "cuda",
         "driver": "550", "torch": "2.11", "triton": "3.6", "flash_attn": "not installed", "git_commit": "abc",
         "timestamp": "2026-11-24T00:00:00+00:00", "host": "h", "check": "pass", "rel_err": 1e-3, "tol": 3e-2}
    r.update(kw)
    return r


def test_schema_accepts_good_and_rejects_bad_rows():
    assert row_errors(_row(), engine="builtin") == []
    assert row_errors(_row(status="ok", ms_p50=None), engine="builtin")
    assert row_errors(_row(status="failed", check="fail", reason="x"), engine="builtin")  # timed though failed
    assert row_errors(_row(status="failed", check="fail", reason="bad", ms_p20=None, ms_p50=None, ms_p80=None),
                      engine="builtin") == []
    assert row_errors(_row(status="ok", check="fail"), engine="builtin")
    bad = _row()
    del bad["git_commit"]
    assert any("git_commit" in e for e in row_errors(bad, engine="builtin"))
    assert row_errors(_row(ms_p50=0.0), engine="builtin")  # never a zero time
    assert row_errors(_row(status="weird"), engine="builtin")


# --------------------------------------------------------------------------------------------------
# --compare
# --------------------------------------------------------------------------------------------------


def test_compare_math_on_hand_made_rows(tmp_path, capsys):
    a = [_row(op="sam", shape="S1", ms_p50=2.0, images_per_s=100.0),
         _row(op="sam", shape="S2", ms_p50=4.0, images_per_s=50.0),
         _row(op="only_a", ms_p50=1.0),
         _row(kind="peak", op="copy", shape="1GiB")]
    b = [_row(op="sam", shape="S1", ms_p50=1.0, images_per_s=200.0),
         _row(op="sam", shape="S2", ms_p50=5.0, images_per_s=40.0),
         _row(op="sam", shape="S2", provider="upstream", ms_p50=5.0),
         _row(op="sam", shape="S1", dtype="float16", ms_p50=1.0)]
    res = report.compare(a, b)
    m = {(x["key"]["shape"], x["key"]["provider"], x["key"]["dtype"]): x for x in res["matched"]}
    assert set(m) == {("S1", "fast", "bfloat16"), ("S2", "fast", "bfloat16")}
    assert m[("S1", "fast", "bfloat16")]["p50_ratio"] == pytest.approx(0.5)
    assert m[("S1", "fast", "bfloat16")]["throughput_ratio"] == pytest.approx(2.0)
    assert m[("S2", "fast", "bfloat16")]["p50_ratio"] == pytest.approx(1.25)
    assert m[("S2", "fast", "bfloat16")]["throughput_ratio"] == pytest.approx(0.8)
    assert [x["op"] for x in res["only_a"]] == ["only_a"]  # peaks are not compared
    assert sorted((x["provider"], x["dtype"]) for x in res["only_b"]) == [("fast", "float16"), ("upstream", "bfloat16")]
    # a failed row on one side gives no ratio
    res2 = report.compare([_row(ms_p50=2.0)], [_row(status="failed", ms_p50=None, images_per_s=None)])
    assert res2["matched"][0]["p50_ratio"] is None
    # the CLI
    from bench.__main__ import main

    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert main(["--compare", str(pa), str(pb)]) == 0
    out = capsys.readouterr().out
    assert "0.500" in out and "2.000" in out and "only in" in out


# --------------------------------------------------------------------------------------------------
# The correctness gate: a wrong provider is reported failed and never timed
# --------------------------------------------------------------------------------------------------


def _gate_rows():
    """Rows of one real case run with a correct, a wrong, a missing and a raising provider, and call counts."""
    from bench.cases import Provider, Unavailable, sam_attention_case
    from bench.measure import Timer, provenance
    from bench.suite import Runner

    dev = torch.device("cpu")
    case = sam_attention_case(6, 4, 1, 2, 64, dev, torch.float32, {})
    upstream = next(p for p in case.providers if p.name == "upstream")
    calls = {"wrong": 0, "right": 0}

    def wrong_build():
        f = upstream.build()

        def fn(*a):
            calls["wrong"] += 1
            return f(*a) + 0.05  # a small constant offset: finite, plausible, wrong
        return fn

    def right_build():
        f = upstream.build()

        def fn(*a):
            calls["right"] += 1
            return f(*a)
        return fn

    def missing():
        raise Unavailable("not here")

    def broken():
        def fn(*a):
            raise RuntimeError("kernel exploded")
        return fn

    provs = [upstream, Provider("wrong", wrong_build), Provider("right", right_build),
             Provider("missing", missing), Provider("broken", broken)]
    timer = Timer(dev, target_ms=1.0, min_reps=3, warmup=1)
    prov = {**provenance(dev), "config": "test"}  # full provenance: the rows pass the schema as real ones
    runner = Runner(dev, torch.float32, timer, {"input_sets": 3}, prov, {"tflops": 1.0, "gbps": 1.0})
    runner.run_case(case, provs)
    return runner.rows, calls


def test_wrong_provider_is_failed_and_not_timed():
    rows, calls = _gate_rows()
    rows = {r["provider"]: r for r in rows}
    w = rows["wrong"]
    assert w["status"] == "failed" and w["check"] == "fail" and "correctness" in w["reason"]
    assert w["ms_p50"] is None and w["reps"] is None and w["rel_err"] > w["tol"]
    assert calls["wrong"] == 1  # the check only: never timed
    assert rows["right"]["status"] == "ok" and calls["right"] >= 1 + 3
    assert rows["upstream"]["status"] == "ok"
    assert rows["missing"]["status"] == "unavailable" and rows["missing"]["reason"] == "not here"
    assert rows["broken"]["status"] == "error" and "kernel exploded" in rows["broken"]["reason"]


def test_bench_exits_nonzero_when_a_provider_fails_unless_allowed(tmp_path, monkeypatch, capsys):
    """``python -m bench`` fails by default on a failed or raising provider (the rows are still written,
    marked failed); ``--allow-failures`` is the explicit opt-out; a clean run exits 0."""
    import bench.suite
    from bench.__main__ import main

    rows, _ = _gate_rows()
    served = {"rows": rows}
    monkeypatch.setattr(bench.suite, "run_suite", lambda *a, **k: [dict(r) for r in served["rows"]])
    threads = torch.get_num_threads()
    argv = ["--smoke", "--no-compile", "--out", str(tmp_path), "--quiet"]
    try:
        assert main(argv + ["--name", "gate"]) == 1
        err = capsys.readouterr().err
        assert "FAILED: " in err and " wrong: correctness check failed" in err
        assert "ERROR: " in err and "kernel exploded" in err and "2 row(s) failed" in err
        saved = {r["provider"]: r["status"] for r in report.load_rows(str(tmp_path / "gate.json"))}
        assert saved["wrong"] == "failed" and saved["broken"] == "error" and saved["right"] == "ok"
        assert "failed" in (tmp_path / "gate.md").read_text()

        assert main(argv + ["--name", "gate2", "--allow-failures"]) == 0
        assert "exit 0 because of --allow-failures" in capsys.readouterr().err

        served["rows"] = [r for r in rows if r["status"] in ("ok", "unavailable")]
        assert main(argv + ["--name", "clean"]) == 0
    finally:
        torch.set_num_threads(threads)


def test_upstream_sam_attention_matches_the_reference_model():
    """bench's re-typed upstream path equals deepencoder.reference.SAMAttention on padded windows."""
    from bench.cases import sam_attention_upstream
    from deepencoder.reference import SAMAttention, window_partition, window_unpartition

    torch.manual_seed(0)
    attn = SAMAttention(128, 2, 4).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(2, 6, 6, 128, dtype=torch.float64)
    win, pad = window_partition(x, 4)
    ref = window_unpartition(attn(win), 4, pad, (6, 6))
    qkv = torch.nn.functional.linear(x, attn.qkv.weight, attn.qkv.bias)
    o = sam_attention_upstream(qkv, attn.rel_pos_h, attn.rel_pos_w, 2, 4, attn.qkv.bias)
    out = torch.nn.functional.linear(o, attn.proj.weight, attn.proj.bias)
    assert torch.allclose(out, ref, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# README block
# --------------------------------------------------------------------------------------------------


def test_readme_block_labels_gpu_and_predictions(tmp_path):
    from bench import readme

    res = tmp_path / "results"
    res.mkdir()
    gpu = [_row(kind="e2e", op="encoder", mode="base", shape="B8-S1024", batch=8, provider=p, ms_p50=ms,
                images_per_s=8 / ms * 1e3) for p, ms in (("reference", 80.0), ("fast", 20.0))]
    gpu.append(_row(kind="peak", op="matmul-bfloat16", shape="8192", tflops=700.0))
    (res / "h100.json").write_text(json.dumps(gpu))
    aot = {"meta": {"kind": "aot_report", "triton": "3.9.0", "git_commit": "abc", "timestamp": "t",
                    "missing": {}, "prediction": {"tflops": 790.0, "tbps": 3.35}},
           "specs": [{"op": "sam_attention", "name": "sam_attention-global-M128", "arch": 90, "dtype": "bf16",
                      "registers": 165, "spills": 0, "mma": "wgmma", "ptxas_ok": True, "error": None,
                      "pred_ms": 0.5, "pred_bound": "compute"}]}
    (res / "aot_report.json").write_text(json.dumps(aot))
    block = readme.render(str(res))
    assert "GPU measurement: H100" in block and "commit `abc`" in block and "4.00x" in block
    assert "PREDICTIONS" in block and "sam_attention-global" in block
    md = tmp_path / "README.md"
    md.write_text(f"intro\n{readme.BEGIN}\nold\n{readme.END}\ntail\n")
    assert readme.update_readme(str(md), block)
    text = md.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith(f"{readme.END}\ntail\n")
    nomark = tmp_path / "R2.md"
    nomark.write_text("no markers")
    assert not readme.update_readme(str(nomark), block) and nomark.read_text() == "no markers"
    assert os.path.exists(md)


# --------------------------------------------------------------------------------------------------
# docs/<kernel>.md tables and the AOT report names
# --------------------------------------------------------------------------------------------------


def test_kernel_docs_tables_are_generated_from_the_committed_aot_reports(tmp_path):
    """docs/*.md hold what bench/results/aot_report*.json say (python -m bench.docs --check), and a
    changed report changes the page."""
    import shutil

    from bench import docs

    assert docs.main(["--check"]) == 0, "docs/ out of date: run python -m bench.docs"
    reports = docs.load_reports(os.path.join(os.path.dirname(docs.__file__), "results"))
    assert reports and reports[0][0] == "aot_report.json"
    name, rep = reports[0]
    rep = json.loads(json.dumps(rep))
    spec = next(r for r in rep["specs"] if r["op"] == "add_layernorm")
    spec["registers"] = 4242
    res = tmp_path / "results"
    res.mkdir()
    (res / "aot_report.json").write_text(json.dumps(rep))
    shutil.copytree(os.path.join(os.path.dirname(os.path.dirname(docs.__file__)), "docs"), tmp_path / "docs")
    assert docs.main(["--check", "--results", str(res), "--docs", str(tmp_path / "docs")]) == 1
    assert docs.main(["--results", str(res), "--docs", str(tmp_path / "docs")]) == 0
    page = (tmp_path / "docs" / "add_layernorm.md").read_text()
    assert f"| {spec['name']} | sm_{spec['arch']} | " in page and "| 4242 |" in page


def test_aot_report_name_records_the_triton_version():
    from bench.aot import report_stem

    assert report_stem("3.6.0") == "aot_report-triton3.6"
    assert report_stem("3.9.1+git4f6a1b2") == "aot_report-triton3.9"
