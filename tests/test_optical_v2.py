"""deepencoder.optical for DeepSeek-OCR 2 (``family="ocr2"``): token accounting, page geometry, the decay
ladder text > gundam > base, budgets, the CLI's ``--model``, and the family recorded in every output.

Encoder checks use ``DeepEncoderV2Config.small_test()`` with seeded random weights: the token *counts*
(the real ones for both ocr2 modes) are what is checked. ocr1 behaviour is covered by test_optical.py.
"""

import json
import os
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepencoder.modes import vision_token_count
from deepencoder.optical import (
    FAMILY_LADDERS,
    FAMILY_PAGE_SIZES,
    BudgetError,
    Schedule,
    choose_geometry,
    compression_table,
    format_compression_table,
    plan_memory,
)
from deepencoder.optical.planner import DROPPED

WORDS = ("optical", "memory", "fades", "older", "turns", "into", "pages", "at", "falling", "resolution", "and",
         "the", "budget", "holds")


def conv(sizes):
    return [dict(role="user" if i % 2 == 0 else "assistant",
                 text=" ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))) for i, n in enumerate(sizes)]


def _cli(argv):
    from deepencoder.optical.cli import main

    return main(argv)


def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# ---------------------------------------------------------------------------------------------- counts, geometry
@pytest.mark.parametrize("size", [(1536, 1536), (1024, 1024), (768, 768), (700, 500), (1536, 2304), (3000, 800),
                                  (769, 768)])
def test_ocr2_compression_table_counts(size):
    rows = compression_table(1000, 4000, 3, size, family="ocr2")
    assert [r.mode for r in rows] == ["gundam", "base"]  # every ocr2 mode, highest resolution first
    for r in rows:
        per = vision_token_count(size[0], size[1], r.mode, family="ocr2")
        assert r.family == "ocr2" and r.tokens_per_page == per and r.vision_tokens == 3 * per
        assert r.ratio == round(1000 / (3 * per), 2)
    assert rows[1].tokens_per_page == 257  # base: the 1024 global view alone, no newlines
    crops = (rows[0].tokens_per_page - 257) // 144
    assert rows[0].tokens_per_page == 144 * crops + 257
    assert (crops == 0) == (size[0] <= 768 and size[1] <= 768)  # the <= 768 gate: no crops, 257
    text = format_compression_table(rows, mark="gundam")
    assert "| gundam * | ocr2" in text and "| base     | ocr2" in text
    with pytest.raises(ValueError, match="'large' for model family 'ocr2'"):
        compression_table(1, 1, 1, size, modes=["large"], family="ocr2")


def test_ocr2_page_sizes_and_density():
    """Native pages: base 1024 (the global view), gundam 1536 (2x2 crops of exactly 768: 833 tokens); the
    font is chosen for density x the ocr2 count, so the ocr2 gundam page holds more than the ocr1 base one."""
    assert FAMILY_PAGE_SIZES["ocr2"] == {"base": (1024, 1024), "gundam": (1536, 1536)}
    counts = {}
    for mode in ("base", "gundam"):
        g = choose_geometry(mode, family="ocr2")
        assert (g.width, g.height) == FAMILY_PAGE_SIZES["ocr2"][mode]
        counts[mode] = vision_token_count(g.width, g.height, mode, family="ocr2")
        assert g.capacity >= 40 * counts[mode]
        bigger = choose_geometry(mode, font_size=g.font_size + 1, family="ocr2")
        assert bigger.capacity < 40 * counts[mode]  # the largest font that reaches the density
    assert counts == {"base": 257, "gundam": 4 * 144 + 257}
    assert choose_geometry(family="ocr2").width == 1536  # default mode of ocr2: gundam
    with pytest.raises(ValueError, match="'tiny' for model family 'ocr2'"):
        choose_geometry("tiny", family="ocr2")
    with pytest.raises(ValueError, match="unknown model family"):
        choose_geometry("base", family="ocr3")


# ---------------------------------------------------------------------------------------------- planner
def test_ocr2_ladder_and_schedule():
    plan = plan_memory(conv([60] * 30), family="ocr2")
    assert plan.family == "ocr2" and plan.ladder == ["text", "gundam", "base"]
    assert plan.tokens_per_page == {"gundam": 833, "base": 257}
    assert (plan.geometry.width, plan.geometry.height) == (1536, 1536)
    expect = Schedule.parse(None, "turns", family="ocr2")  # text:4,gundam:16,base
    assert plan.levels == [expect.level_for(29 - i) for i in range(30)]
    assert plan.levels[0] == "base" and plan.levels[-1] == "text" and "gundam" in plan.levels
    d = plan.as_dict()
    assert d["family"] == "ocr2" and d["max_tiles"] == 6 and d["vision_tokens_per_page"] == plan.tokens_per_page
    # a page of 768 or less gets no crops: gundam would cost base's 257, so it leaves the ladder
    small = plan_memory(conv([20] * 6), family="ocr2", page_size=(768, 768), schedule="text:1,gundam:3,base")
    assert small.ladder == ["text", "base"] and "gundam" not in small.levels
    assert any("scheduled gundam turns use base" in n for n in small.notes)


@pytest.mark.parametrize("spec, needle", [
    ("text:4,large:8,base", "'large' is not a mode of model family 'ocr2'"),
    ("text:4,gundam:8,tiny", "'tiny' is not a mode of model family 'ocr2'"),
    ("text:4,base:8,gundam", "ladder text > gundam > base"),
    ("text:4,huge:8,base", "unknown level 'huge'"),
])
def test_ocr2_bad_schedule_is_one_line(spec, needle, tmp_path, capsys):
    with pytest.raises(ValueError, match=needle) as e:
        Schedule.parse(spec, family="ocr2")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=needle):
        plan_memory(conv([5] * 3), schedule=spec, family="ocr2")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(conv([5] * 3)), encoding="utf-8")
    rc = _cli(["compress", str(path), "-o", str(tmp_path / "o"), "--model", "ocr2", "--schedule", spec, "--no-encode"])
    _one_line_error(capsys, rc, needle)
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


def test_schedule_of_one_family_refused_for_the_other():
    with pytest.raises(ValueError, match="made for model family 'ocr1', the plan is for 'ocr2'"):
        plan_memory(conv([5] * 3), schedule=Schedule.parse("text:1,base"), family="ocr2")


def assert_monotone(plan):
    rank = {lv: k for k, lv in enumerate(list(FAMILY_LADDERS["ocr2"]) + [DROPPED])}
    for i in range(len(plan.turns)):
        for j in range(len(plan.turns)):
            older = plan.ages[i] > plan.ages[j] or (plan.ages[i] == plan.ages[j] and i < j)
            if older:
                assert rank[plan.levels[i]] >= rank[plan.levels[j]], (i, j, plan.levels)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=20),
       ages=st.none() | st.lists(st.integers(0, 30), min_size=20, max_size=20),
       budget=st.integers(0, 20000), drop=st.booleans())
def test_ocr2_budget_plan_within_budget_and_monotone(sizes, ages, budget, drop):
    turns = conv(sizes)
    if ages is not None:
        for t, a in zip(turns, ages):
            t["age"] = a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            plan = plan_memory(turns, budget=budget, on_overflow="drop" if drop else "error", family="ocr2")
        except BudgetError as e:
            assert not drop
            floor = plan_memory(turns, schedule="base", family="ocr2")
            assert floor.cost > budget and str(floor.cost) in str(e) and "base pages" in str(e)
            return
    assert plan.cost <= budget
    assert set(plan.levels) <= {"text", "gundam", "base", DROPPED}
    assert_monotone(plan)
    order = plan.order  # a turn is below its scheduled level only if every older turn is at the floor (base)
    for k, i in enumerate(order):
        if plan.levels[i] != plan.scheduled[i]:
            assert all(plan.levels[j] in ("base", DROPPED) for j in order[:k])
    for b in plan.blocks():  # priced with ocr2 counts; the renderer lays out exactly the planned pages
        if b.level != "text":
            assert b.tokens_per_page == {"gundam": 833, "base": 257}[b.level]
            assert plan.layout_block(b).num_pages == b.pages


# ---------------------------------------------------------------------------------------------- encoder, outputs
def _encoder(family):
    from deepencoder.config import family_config
    from deepencoder.encoder import DeepEncoder, RandomWeightsWarning

    with pytest.warns(RandomWeightsWarning):
        return DeepEncoder(config=family_config(family, small=True), weights=None, device="cpu", seed=0)


def test_ocr2_encoder_output_equals_planned_counts(tmp_path):
    """One gundam page (2x2 crops: 833) and one base page (257) through the real ocr2 encoder: its output
    lengths equal vision_token_count and the compression table; the family is in every output."""
    from safetensors import safe_open

    from deepencoder.optical.pipeline import compress_to_dir

    enc = _encoder("ocr2")
    assert enc.family == "ocr2"
    plan = plan_memory(conv([200, 150, 30]), schedule="text:1,gundam:2,base", family="ocr2")
    assert [b.level for b in plan.blocks()] == ["base", "gundam", "text"]
    assert [b.pages for b in plan.blocks()[:2]] == [1, 1]
    s = compress_to_dir(plan, str(tmp_path), encoder=enc, batch_size=2, progress=False)
    assert s["family"] == "ocr2" and s["encoder"]["family"] == "ocr2"
    w, h = plan.geometry.width, plan.geometry.height
    table = {r.mode: r.tokens_per_page for r in compression_table(1, 1, 1, (w, h), family="ocr2")}
    with safe_open(str(tmp_path / "encoded.safetensors"), "pt") as f:
        meta = f.metadata()
        assert meta["family"] == "ocr2" and meta["random_weights"] == "true"
        got = {}
        for rec in s["pages"]:
            t = f.get_tensor(rec["name"])
            assert t.shape == (vision_token_count(w, h, rec["mode"], family="ocr2"), enc.config.n_embed)
            assert rec["encoded_tokens"] == rec["vision_tokens"] == t.shape[0] == table[rec["mode"]]
            got[rec["mode"]] = t.shape[0]
    assert got == {"gundam": 833, "base": 257}
    assert sum(p["vision_tokens"] for p in s["pages"]) + plan.text_tokens[-1] == plan.cost
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["family"] == "ocr2" and saved["ladder"] == ["text", "gundam", "base"]


def test_encoder_of_other_family_is_refused(tmp_path):
    from deepencoder.optical.pipeline import compress_to_dir

    plan = plan_memory(conv([40, 10]), schedule="text:1,base", family="ocr2")
    with pytest.raises(ValueError, match="planned for model family 'ocr2' but the encoder is 'ocr1'"):
        compress_to_dir(plan, str(tmp_path / "o"), encoder=_encoder("ocr1"), progress=False)


def test_cli_render_ocr2_records_family_and_refuses_family_change(tmp_path, capsys, monkeypatch):
    src = tmp_path / "doc.md"
    src.write_text("\n\n".join(f"## Section {i}\n\n" + " ".join(WORDS) * 40 for i in range(12)), encoding="utf-8")
    out = tmp_path / "r"
    assert _cli(["render", str(src), "-o", str(out), "--model", "ocr2", "-q"]) == 0
    cap = capsys.readouterr().out
    assert "| gundam * | ocr2" in cap and "| base     | ocr2" in cap and "model ocr2" in cap
    s = json.loads((out / "summary.json").read_text())
    assert s["family"] == "ocr2" and s["mode"] == "gundam" and s["max_tiles"] == 6
    assert [r["mode"] for r in s["compression_table"]] == ["gundam", "base"]
    assert {r["family"] for r in s["compression_table"]} == {"ocr2"}
    assert all(p["vision_tokens"] == 833 and p["size"] == [1536, 1536] for p in s["pages"])
    # a mode the family lacks: one line, nothing written
    rc = _cli(["render", str(src), "-o", str(tmp_path / "x"), "--model", "ocr2", "--mode", "large"])
    _one_line_error(capsys, rc, "--mode", "'large'", "'ocr2'")
    rc = _cli(["compress", str(tmp_path / "c.json"), "-o", str(tmp_path / "x"), "--model", "ocr2",
               "--page-mode", "tiny", "--no-encode"])
    _one_line_error(capsys, rc, "--page-mode", "'tiny'", "'ocr2'")
    assert not (tmp_path / "x").exists()

    # an interrupted ocr2 run is continued by the same command and refused for another family
    from deepencoder.optical.render import Layout

    real = Layout.page_image
    calls = []

    def interrupting(self, page):
        calls.append(page)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, page)

    out2 = tmp_path / "r2"
    argv = ["render", str(src), "-o", str(out2), "--mode", "base", "--font-size", "16", "--model", "ocr2", "-q"]
    monkeypatch.setattr(Layout, "page_image", interrupting)
    assert _cli(argv) == 130
    capsys.readouterr()
    monkeypatch.setattr(Layout, "page_image", real)
    assert not (out2 / "summary.json").exists() and (out2 / "page-0001.png").exists()
    rc = _cli(argv[:-3] + ["--model", "ocr1", "-q"])  # same pages (base is 1024x1024 in both), other family
    _one_line_error(capsys, rc, "different request")
    assert _cli(argv) == 0  # the same request (family included) continues
    assert json.loads((out2 / "summary.json").read_text())["family"] == "ocr2"


def test_cli_family_detected_from_weights(tmp_path, capsys):
    """--model auto (the default) takes the family from the checkpoint's keys, and the CLI builds and loads
    an ocr2 encoder from it; --model ocr1 against an ocr2 checkpoint is a one-line error."""
    from deepencoder.config import DeepEncoderV2Config
    from deepencoder.models import DeepEncoderV2Reference
    from deepencoder.weights import init_random_, save_checkpoint

    ck = str(tmp_path / "v2.safetensors")
    save_checkpoint(init_random_(DeepEncoderV2Reference(DeepEncoderV2Config.small_test()), 0), ck)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(conv([300, 200, 100, 50, 20, 10])), encoding="utf-8")
    out = tmp_path / "o"
    assert _cli(["compress", str(path), "-o", str(out), "--weights", ck, "--config", "small-test",
                 "--schedule", "text:2,base", "--device", "cpu", "-q"]) == 0
    cap = capsys.readouterr()
    assert "model ocr2 (DeepSeek-OCR 2), ladder text > gundam > base" in cap.out and "MEANINGLESS" not in cap.err
    s = json.loads((out / "summary.json").read_text())
    assert s["family"] == "ocr2" and s["vision_tokens_per_page"] == {"gundam": 833, "base": 257}
    assert s["encoder"]["family"] == "ocr2" and s["encoder"]["random_weights"] is False
    assert [(p["mode"], p["encoded_tokens"]) for p in s["pages"]] == [("base", 257)]
    from safetensors import safe_open

    with safe_open(str(out / "encoded.safetensors"), "pt") as f:
        assert f.metadata()["family"] == "ocr2" and f.get_tensor(s["pages"][0]["name"]).shape[0] == 257
    assert s["tokens_planned"] == sum(p["vision_tokens"] for p in s["pages"]) + sum(
        t["text_tokens"] for t in s["turns"] if t["level"] == "text")
    rc = _cli(["compress", str(path), "-o", str(tmp_path / "o1"), "--weights", ck, "--model", "ocr1",
               "--config", "small-test", "--no-encode"])
    _one_line_error(capsys, rc, "DeepSeek-OCR 2 (ocr2) checkpoint", "--model ocr2")
