"""Ahead-of-time compile of every kernel config for sm_90 and sm_80, on the CPU (no GPU, no driver).

For each op's ``aot_specs()``: every spec compiles (Triton -> PTX -> the bundled ptxas), uses no spill
memory, and, for the ops with matrix work (``MMA_OPS``), its fp16/bf16 specs land on tensor cores
(``wgmma`` or ``mma`` in the PTX); ``add_layernorm`` is a row reduction with no matrix product. An op with
no specs FAILS: a missing ``aot_specs()`` must not pass silently. Specs tuned for one arch (``-sm90-`` in
the name, or an ``arch`` / ``archs`` key) compile for that arch; the rest for both (kernels/_aot.py).

Compiles run in fresh worker processes with ``TRITON_INTERPRET`` removed (the conftest sets it for the
interpreter tests), two at a time; Triton's cache makes reruns fast. Cold: ~1-2 min for both ops.
"""

import pytest
from deepencoder.kernels._aot import compile_op_specs, spec_archs

OPS = ["sam_attention", "compressor", "add_layernorm"]
MMA_OPS = ("sam_attention", "compressor")


@pytest.mark.parametrize("op", OPS)
def test_aot_compiles_for_sm90_and_sm80_without_spills_on_tensor_cores(op):
    res = compile_op_specs([op], archs=(80, 90), workers=2)
    assert op not in res["missing"], f"{op}: no AOT specs: {res['missing'].get(op)}"
    results = res["results"]
    assert results, f"{op}: aot_specs() returned no specs"
    archs = {r["arch"] for r in results}
    assert {80, 90} <= archs, f"{op}: specs cover archs {sorted(archs)}, need sm_80 and sm_90"
    problems = []
    for r in results:
        tag = f"{r.get('name')} sm_{r.get('arch')}"
        if r.get("error") or not r.get("ptxas_ok"):
            problems.append(f"{tag}: does not compile: {r.get('error')}")
            continue
        if r.get("spills"):
            problems.append(f"{tag}: {r['spills']} bytes of spills ({r['spill_stores']} st + {r['spill_loads']} ld), "
                            f"{r['registers']} registers")
        if op in MMA_OPS and r.get("dtype") in ("fp16", "bf16") and r.get("mma") not in ("wgmma", "mma"):
            problems.append(f"{tag}: no mma / wgmma in the PTX (mma={r.get('mma')})")
    assert not problems, f"{op}: {len(problems)} problem(s):\n" + "\n".join(problems)


def test_every_op_with_a_kernel_is_compiled_here_and_in_the_report():
    from bench.aot import MMA_OPS as REPORT_MMA_OPS
    from bench.aot import OPS as REPORT_OPS

    assert set(OPS) <= set(REPORT_OPS) and set(MMA_OPS) <= set(REPORT_MMA_OPS)


def test_spec_archs_rules():
    assert spec_archs({"name": "compressor-neck0-sm90-cfg0"}) == [90]
    assert spec_archs({"name": "x-sm80-y"}) == [80]
    assert spec_archs({"name": "sam_attention-global-M128"}) == [80, 90]
    assert spec_archs({"name": "sam-sm90-x", "archs": [80, 90]}) == [80, 90]
    assert spec_archs({"name": "k", "arch": 90}) == [90]


# ------------------------------------------------------------------------------------------------ OCR-2 ops

def _problems(res, op):
    assert op not in res["missing"], f"{op}: no AOT specs: {res['missing'].get(op)}"
    out = []
    for r in res["results"]:
        tag = f"{r.get('name')} sm_{r.get('arch')}"
        if r.get("error") or not r.get("ptxas_ok"):
            out.append(f"{tag}: does not compile: {r.get('error')}")
        elif r.get("spills"):
            out.append(f"{tag}: {r['spills']} bytes of spills, {r['registers']} registers")
    return out


def test_aot_flow_attention_wgmma_on_sm90_mma_on_sm80_no_spills():
    """Every shipped flow-attention config: no spills on the arch(s) it runs on; the QK^T / PV dots on
    Hopper warpgroup MMA (wgmma) on sm_90 and mma.sync on sm_80."""
    res = compile_op_specs(["flow_attention"], archs=(80, 90), workers=2)
    problems = _problems(res, "flow_attention")
    archs = {r["arch"] for r in res["results"]}
    assert {80, 90} <= archs, f"flow_attention: specs cover archs {sorted(archs)}"
    for r in res["results"]:
        want = "wgmma" if r["arch"] == 90 else "mma"
        if "rope_qk" in str(r.get("name")):  # the library route's element-wise RoPE pass: no dots
            continue
        if r.get("mma") != want:
            problems.append(f"{r['name']} sm_{r['arch']}: mma={r.get('mma')}, want {want}")
    assert not problems, "\n".join(problems)


def test_aot_elementwise_ocr2_ops_compile_without_spills():
    """Row-wise / element-wise kernels (no dots): add_rmsnorm and swiglu compile for sm_80 and sm_90 with
    no spills (one worker pool for both ops)."""
    res = compile_op_specs(["add_rmsnorm", "swiglu"], archs=(80, 90), workers=2)
    problems = _problems(res, "add_rmsnorm") + _problems({"missing": res["missing"], "results": []}, "swiglu")
    for op in ("add_rmsnorm", "swiglu"):
        rs = [r for r in res["results"] if r.get("op") == op]
        assert rs and {r["arch"] for r in rs} == {80, 90}, f"{op}: {[(r.get('name'), r.get('arch')) for r in rs]}"
    assert not problems, "\n".join(problems)
