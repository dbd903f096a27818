"""deepencoder.optical: rendering, layout records, token accounting, memory-decay planner, CLI.

Encoder checks use ``DeepEncoderConfig.small_test()`` (seeded random weights): the token *counts* are
what is checked, and they are the real ones for every mode.
"""

import json
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepencoder.modes import vision_token_count
from deepencoder.optical import (
    LADDER,
    BudgetError,
    ConversationError,
    EmptyInputError,
    Schedule,
    TooManyPagesError,
    UnsupportedCharacterWarning,
    choose_geometry,
    compression_table,
    estimate_text_tokens,
    layout_text,
    load_conversation,
    make_counter,
    plan_memory,
    resolve_ages,
)
from deepencoder.optical.font import FONT_DIR, FONT_FILE, FONT_LICENSE_FILE, font_info
from deepencoder.optical.planner import DROPPED, turns_from_records
from deepencoder.optical.render import DRAWN_KINDS, PAGE_SIZES, PageGeometry, _GlyphCache, _iter_clusters

MD = """# Optical memory

Recent turns stay as text; older ones are rendered into pages and
encoded at   falling resolution.

- gundam, then large, then base, and so on down to tiny, with a long item that must wrap onto a second row
- second item
  1. nested

```python
def f(x):
\treturn x  # a tab
```

---
Ünïcödé e\u0301 and a very_long_identifier_that_does_not_fit_on_one_row_of_a_small_page_at_all_really_no
"""


def small_geometry(font_size=14):
    return PageGeometry.make(320, 320, font_size)


def check_records(lay, markdown):
    """Every character of every source in exactly one record; drawn cells inside the page, no overlap."""
    g = lay.geometry
    recs = list(lay.records())
    for src, text in lay.sources.items():
        mine = sorted((r for r in recs if r.src == src), key=lambda r: r.start)
        pos = 0
        for r in mine:
            assert r.start == pos, f"gap or overlap at offset {pos}: {r}"
            assert r.end > r.start
            pos = r.end
        assert pos == len(text), f"characters {pos}..{len(text)} never placed"
        for r in mine:
            piece = text[r.start:r.end]
            if r.kind == "fallback":
                assert len(piece) == 1
            elif r.kind in ("break", "newline"):
                assert piece.isspace(), (r, piece)
            elif r.kind == "markup":
                assert markdown, "plain text has no markup"
                assert piece.isspace() or piece.lstrip(" ")[:1] in "#`~-*_", (r, piece)
            else:
                assert r.kind == "text"
                # one cell per character with its combining marks (what page_image draws), except a run of
                # blanks holding a tab, which spans to the next tab stop and stays a piece of its own
                if len(list(_iter_clusters(text, r.start, r.end))) != r.cells:
                    assert "\t" in piece and piece.isspace(), (r, piece)
    per_line = {}
    for r in recs:
        assert 0 <= r.page < lay.num_pages and 0 <= r.line < g.rows
        assert r.y == g.margin + r.line * g.line_h and r.y + g.line_h <= g.height - g.margin
        assert g.margin <= r.x <= g.margin + g.cols * g.cell_w
        if r.kind in DRAWN_KINDS:
            assert r.cells >= 1 and r.x + r.cells * g.cell_w <= g.margin + g.cols * g.cell_w
            per_line.setdefault((r.page, r.line), []).append((r.x, r.x + r.cells * g.cell_w))
        else:
            assert r.cells == 0
    for spans in per_line.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"overlapping cells {spans}"


# ---------------------------------------------------------------------------------------------- font
def test_font_ships_with_licence_and_metrics():
    path = os.path.join(FONT_DIR, FONT_FILE)
    assert os.path.isfile(path) and os.path.getsize(path) < 1_000_000
    lic = open(os.path.join(FONT_DIR, FONT_LICENSE_FILE), encoding="utf-8").read()
    assert "Bitstream Vera Fonts Copyright" in lic and "Arev Fonts Copyright" in lic
    info = font_info()
    assert info.path == path
    assert info.sha256 == "0f5db4f1749979d961019838b160bec74abdf7f9eca69553fe1aa856bbff49a4"
    assert (info.units_per_em, info.ascender, info.descender, info.advance) == (2048, 1901, 483, 1233)
    assert info.covers("A") and info.covers("é") and info.covers("\ufffd") and not info.covers("中")
    from fontTools.ttLib import TTFont  # in the test extra: a missing fontTools must fail, not pass

    assert set(TTFont(path).getBestCmap()) == set(info.coverage)


# ---------------------------------------------------------------------------------------------- rendering
def test_rendering_is_deterministic():
    a = layout_text(MD, "tiny", font_size=12)
    b = layout_text(MD, "tiny", font_size=12)
    img_a = np.asarray(a.page_image(0))
    _GlyphCache._store.clear()  # rasterise every glyph again
    img_b = np.asarray(b.page_image(0))
    assert np.array_equal(img_a, img_b)
    assert list(a.records()) == list(b.records())
    assert img_a.shape == (512, 512) and img_a.min() == 0 and img_a.max() == 255
    assert not np.array_equal(img_a, np.asarray(layout_text(MD + "x", "tiny", font_size=12).page_image(0)))


@pytest.mark.parametrize("markdown", [True, False], ids=["markdown", "plain"])
def test_every_character_placed_exactly_once(markdown):
    lay = layout_text(MD * 6, "tiny", font_size=14, markdown=markdown, size=(320, 320))
    assert lay.num_pages > 1
    check_records(lay, markdown)
    if not markdown:  # plain: every non-space character is drawn, in reading order
        drawn = sorted((r for r in lay.records() if r.kind in DRAWN_KINDS), key=lambda r: r.start)
        text = lay.sources[0]
        assert "".join(text[r.start:r.end] for r in drawn).replace(" ", "").replace("\t", "") == \
            "".join(text.split())
        keys = [(r.page, r.line, r.x) for r in drawn]
        assert keys == sorted(keys)


_pieces = list("ab cd\n\t-#`*1.  ") + ["\r\n", "\r", "é", "e\u0301", "\u0301", "中", "\x00", "😀", "```\n",
                                        "# ", "- ", "  - ", "1. ", "---\n", "xyzxyzxyzxyzxyzxyzxyzxyz"]
_text = st.lists(st.sampled_from(_pieces), max_size=120).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_text, markdown=st.booleans(), font=st.sampled_from([14, 20, 30]))
def test_records_property(text, markdown, font):
    if not text.strip():
        with pytest.raises(EmptyInputError):
            layout_text(text)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsupportedCharacterWarning)
        lay = layout_text(text, geometry=small_geometry(font), markdown=markdown)
    check_records(lay, markdown)


def test_markdown_blocks():
    lay = layout_text(MD, "tiny", font_size=14)
    styles = [r.style for r in lay.rows]
    assert styles[0] == "heading" and "code" in styles and "rule" in styles and "blank" in styles
    kinds = {lay.sources[0][r.start:r.end]: r.kind for r in lay.records()}
    assert kinds["# "] == "markup" and kinds["```python\n"] == "markup"
    # list continuation rows hang under the item text
    item = next(r for r in lay.records() if lay.sources[0][r.start:r.end].startswith("- gundam"))
    cont = [r for r in lay.records() if r.line == item.line + 1 and r.kind == "text"][0]
    assert cont.x == item.x + 2 * lay.geometry.cell_w


def test_font_size_follows_density():
    for mode in ("tiny", "small", "base", "large", "gundam"):
        g = choose_geometry(mode)
        assert (g.width, g.height) == PAGE_SIZES[mode]
        target = 40 * vision_token_count(g.width, g.height, mode)
        assert g.capacity >= target
        assert choose_geometry(mode, font_size=g.font_size + 1).capacity < target  # the largest that fits
    assert choose_geometry("base", density=10).font_size > choose_geometry("base", density=40).font_size
    with pytest.raises(ValueError):
        choose_geometry("base", density=0)


def test_unsupported_characters_are_visible_and_reported():
    text = "ok 中文 \x07 done"
    with pytest.warns(UnsupportedCharacterWarning, match="U\\+4E2D") as w:
        lay = layout_text(text, "tiny", font_size=24)
    assert "U+0007" in str(w[0].message)
    assert dict(lay.missing) == {"中": 1, "文": 1, "\x07": 1}
    fb = [r for r in lay.records() if r.kind == "fallback"]
    assert [text[r.start] for r in fb] == ["中", "文", "\x07"]
    img = np.asarray(lay.page_image(0))
    g = lay.geometry
    for r in fb:  # something is drawn in each fallback cell
        assert img[r.y: r.y + g.line_h, r.x: r.x + g.cell_w].min() < 128
    check_records(lay, True)


def test_empty_and_enormous_input():
    for t in ("", "   \n\n\t"):
        with pytest.raises(EmptyInputError, match="empty"):
            layout_text(t)
    with pytest.raises(TypeError):
        layout_text(None)
    big = ("lorem ipsum dolor sit amet, consectetur adipiscing elit " * 20 + "\n") * 3000  # 3.4 MB
    with pytest.raises(TooManyPagesError, match=r"needs \d+ pages .* over the limit of 50"):
        layout_text(big, "tiny", max_pages=50)
    lay = layout_text(big, "tiny", max_pages=None)
    assert lay.num_pages > 50
    check_records_sample = list(lay.records(lay.num_pages - 1))
    assert check_records_sample[-1].end == len(big)
    with pytest.raises(ValueError, match="columns"):
        PageGeometry.make(64, 64, 40)


# ---------------------------------------------------------------------------------------------- tokens
def test_token_counts_agree_with_vision_token_count():
    for mode in ("tiny", "small", "base", "large", "gundam"):
        w, h = PAGE_SIZES[mode]
        rows = compression_table(1000, 4000, 3, (w, h))
        for r in rows:
            assert r.tokens_per_page == vision_token_count(w, h, r.mode)
            assert r.vision_tokens == 3 * r.tokens_per_page
            assert r.ratio == round(1000 / r.vision_tokens, 2)
    assert [r.tokens_per_page for r in compression_table(1, 1, 1, (1280, 1280))] == [693, 421, 273, 111, 73]
    assert compression_table(1, 1, 1, (1280, 1920))[0].tokens_per_page == 903


def test_text_token_counters():
    c = make_counter()
    assert c.is_estimate and "ESTIMATE" in c.name
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcd" * 10) == 10
    assert estimate_text_tokens("中文中文") == 4
    words = make_counter(lambda s: s.split())  # a tokenizer returning pieces: the length counts
    assert words("a b c") == 3 and not words.is_estimate
    assert make_counter("json:dumps")("ab") == 4  # module:function spec (len of the returned string)
    with pytest.raises(ValueError):
        make_counter("nonsense")


# ---------------------------------------------------------------------------------------------- planner
def conv(sizes, **extra):
    words = "memory fades slowly into smaller pages while new turns stay sharp".split()
    return [dict(role="user" if i % 2 == 0 else "assistant",
                 text=" ".join(words[(i + k) % len(words)] for k in range(n)), **extra) for i, n in enumerate(sizes)]


def assert_monotone(plan):
    rank = {lv: k for k, lv in enumerate(list(LADDER) + [DROPPED])}
    for i in range(len(plan.turns)):
        for j in range(len(plan.turns)):
            older = plan.ages[i] > plan.ages[j] or (plan.ages[i] == plan.ages[j] and i < j)
            if older:
                assert rank[plan.levels[i]] >= rank[plan.levels[j]], (i, j, plan.levels)


def test_schedule_by_age():
    plan = plan_memory(conv([50] * 70))
    assert plan.levels[-1] == "text" and plan.levels[0] == "tiny"
    expect = Schedule.parse()
    assert plan.levels == [expect.level_for(69 - i) for i in range(70)]
    assert_monotone(plan)
    assert plan.tokens_per_page == {"gundam": 693, "large": 421, "base": 273, "small": 111, "tiny": 73}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(0, 2500), min_size=1, max_size=25),
       ages=st.none() | st.lists(st.integers(0, 40), min_size=25, max_size=25),
       budget=st.integers(0, 30000), drop=st.booleans())
def test_planner_budget_and_monotonicity(sizes, ages, budget, drop):
    turns = conv(sizes)
    if ages is not None:
        for t, a in zip(turns, ages):
            t["age"] = a
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = plan_memory(turns, budget=budget, on_overflow="drop" if drop else "error")
    except BudgetError as e:
        assert not drop
        floor = plan_memory(turns, schedule="tiny")
        assert floor.cost > budget and str(floor.cost) in str(e)
        return
    assert plan.cost <= budget
    assert_monotone(plan)
    unscheduled = plan_memory(turns)
    if unscheduled.cost <= budget:
        assert plan.levels == unscheduled.levels and plan.steps == 0  # nothing degraded needlessly
    # oldest first: a turn is below its scheduled level only if every older turn is at the floor
    order = plan.order
    for k, i in enumerate(order):
        if plan.levels[i] != plan.scheduled[i]:
            assert all(plan.levels[j] in ("tiny", DROPPED) for j in order[:k])
    for b in plan.blocks():  # the planned page count is what the renderer lays out
        if b.level != "text":
            lay = plan.layout_block(b)
            assert lay.num_pages == b.pages


def test_planner_overflow_is_explicit():
    turns = conv([3000] * 6)
    with pytest.raises(BudgetError, match="cheapest plan"):
        plan_memory(turns, budget=100)
    with pytest.warns(UserWarning, match="DROPPED"):
        plan = plan_memory(turns, budget=100, on_overflow="drop")
    assert plan.dropped == [0, 1, 2, 3, 4, 5][: len(plan.dropped)] and plan.dropped
    assert all(plan.levels[i] == DROPPED for i in plan.dropped) and plan.cost <= 100
    assert plan.as_dict()["dropped_turns"] == plan.dropped


def test_conversation_input_rules():
    with pytest.raises(ConversationError, match="no turns"):
        plan_memory([])
    with pytest.raises(ConversationError, match="'text'"):
        turns_from_records([{"role": "user"}])
    with pytest.raises(ConversationError, match="mix"):
        resolve_ages(turns_from_records([{"text": "a", "age": 1}, {"text": "b"}]))
    ts = turns_from_records([{"text": "a", "timestamp": "2025-01-01T00:00:00Z"},
                             {"text": "b", "timestamp": "2025-01-01T06:00:00+00:00"}])
    ages, unit = resolve_ages(ts)
    assert (ages, unit) == ([6 * 3600.0, 0.0], "seconds")
    assert Schedule.parse(None, "seconds").level_for(2 * 3600) == "gundam"
    with pytest.raises(ValueError, match="ladder"):
        Schedule.parse("text:4,tiny:8,base")
    with pytest.raises(ValueError, match="increasing"):
        Schedule.parse("text:8,base:4,tiny")
    plan = plan_memory([{"text": "", "role": "user"}, {"text": "hi", "role": "user"}], schedule="text:1,base")
    assert plan.levels == ["base", "text"]  # an empty turn still gets its label row


# ---------------------------------------------------------------------------------------------- encoder + CLI
def _encoder():
    from deepencoder.config import DeepEncoderConfig
    from deepencoder.encoder import DeepEncoder, RandomWeightsWarning

    with pytest.warns(RandomWeightsWarning):  # the API says so itself
        return DeepEncoder(config=DeepEncoderConfig.small_test(), weights=None, device="cpu", seed=0)


def test_encoder_token_counts_match_for_every_mode(tmp_path):
    enc = _encoder()
    from deepencoder.optical.pipeline import compress_to_dir

    turns = conv([400, 300, 200, 100, 80, 60])
    plan = plan_memory(turns, schedule="text:1,gundam:2,large:3,base:4,small:5,tiny")
    assert [b.level for b in plan.blocks()] == ["tiny", "small", "base", "large", "gundam", "text"]
    s = compress_to_dir(plan, str(tmp_path), encoder=enc, batch_size=3, progress=False)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "encoded.safetensors"), "pt") as f:
        assert f.metadata()["random_weights"] == "true"
        for rec in s["pages"]:
            t = f.get_tensor(rec["name"])
            w, h = rec["size"]
            assert t.shape == (vision_token_count(w, h, rec["mode"]), enc.config.n_embed)
            assert rec["encoded_tokens"] == rec["vision_tokens"] == t.shape[0]
    assert sum(p["vision_tokens"] for p in s["pages"]) + plan.text_tokens[-1] == plan.cost


def _cli(argv):
    from deepencoder.optical.cli import main

    return main(argv)


def test_cli_compress_end_to_end(tmp_path, capsys):
    path = tmp_path / "conv.jsonl"
    path.write_text("\n".join(json.dumps(t) for t in conv([300, 200, 120, 40, 10])), encoding="utf-8")
    out = tmp_path / "out"
    argv = ["compress", str(path), "-o", str(out), "--budget", "1200", "--schedule", "text:1,large:2,base:3,tiny",
            "--config", "small-test", "-q", "--turns"]
    assert _cli(argv) == 0
    cap = capsys.readouterr()
    assert "after: planned" in cap.out and "MEANINGLESS" in cap.err
    s = json.loads((out / "summary.json").read_text())
    assert s["tokens_planned"] <= 1200 and s["encoder"]["random_weights"] is True
    pngs = sorted(p.name for p in out.glob("page-*.png"))
    assert pngs == [p["file"] for p in s["pages"]] and pngs
    assert (out / "encoded.safetensors").exists()
    assert _cli(argv) == 2  # no silent overwrite
    assert "--force" in capsys.readouterr().err
    assert _cli(argv + ["--force"]) == 0


def test_cli_render_and_errors(tmp_path, capsys):
    src = tmp_path / "doc.md"
    src.write_text(MD, encoding="utf-8")
    out = tmp_path / "r"
    assert _cli(["render", str(src), "-o", str(out), "--mode", "tiny", "-q"]) == 0
    cap = capsys.readouterr()
    assert "| tiny *" in cap.out and "ESTIMATED" in cap.out
    lay = json.loads((out / "layout.json").read_text())
    assert sum(r[2] - r[1] for r in lay["records"]) == len(MD)
    assert (out / "page-0001.png").exists() and not (out / "encoded.safetensors").exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert _cli(["render", str(empty), "-o", str(tmp_path / "e")]) == 2
    assert "empty" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert _cli(["compress", str(bad), "-o", str(tmp_path / "b"), "--no-encode"]) == 2
    assert "no turns" in capsys.readouterr().err
    conv_path = tmp_path / "c.json"
    conv_path.write_text(json.dumps(conv([3000] * 3)))
    assert _cli(["compress", str(conv_path), "-o", str(tmp_path / "c"), "--budget", "10", "--no-encode"]) == 2
    assert "cheapest plan" in capsys.readouterr().err
    assert _cli(["compress", str(conv_path), "-o", str(tmp_path / "c"), "--budget", "10", "--no-encode",
                 "--drop-oldest", "-q"]) == 0
    assert "DROPPED" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- bad input (issue 15)
def test_one_line_jsonl_is_one_turn(tmp_path):
    p = tmp_path / "one.jsonl"
    p.write_text(json.dumps({"role": "user", "text": "hello there"}) + "\n", encoding="utf-8")
    turns = load_conversation(str(p))
    assert [(t.role, t.text) for t in turns] == [("user", "hello there")]
    p.write_text(json.dumps({"role": "user", "txt": "typo"}), encoding="utf-8")
    with pytest.raises(ConversationError, match="one turn \\(with 'text'\\) or hold the list"):
        load_conversation(str(p))


def test_schedule_last_entry_bound_is_refused():
    with pytest.raises(ValueError, match="last schedule entry 'text:abc'"):
        Schedule.parse("text:abc")
    with pytest.raises(ValueError, match="last schedule entry 'tiny:9'"):
        Schedule.parse("text:4,tiny:9")
    assert Schedule.parse("text:4,tiny").levels == ("text", "tiny")


@pytest.mark.parametrize("density", [float("nan"), float("inf"), 0.0, -3.0])
def test_density_must_be_positive_finite(density):
    with pytest.raises(ValueError, match="density must be a positive number"):
        choose_geometry("tiny", density)


def test_page_size_is_capped(monkeypatch):
    from deepencoder.limits import LimitError
    from deepencoder.optical.render import parse_page_size

    with pytest.raises(LimitError, match="100000x100000.*over the limit.*DEEPENCODER_MAX_PAGE_PIXELS"):
        parse_page_size("100000x100000")
    with pytest.raises(LimitError, match="over the limit"):
        PageGeometry.make(5000, 5000, 12)  # the API is capped too, not only the CLI
    monkeypatch.setenv("DEEPENCODER_MAX_PAGE_PIXELS", str(5000 * 5000))
    assert PageGeometry.make(5000, 5000, 12).width == 5000


def test_right_to_left_text_warns():
    from deepencoder.optical import RightToLeftWarning

    with pytest.warns(RightToLeftWarning, match="3 right-to-left"):
        layout_text("abc \u05e9\u05dc\u05d5 def", "tiny", font_size=12)  # Hebrew
    with pytest.warns(RightToLeftWarning, match="2 right-to-left"):
        plan_memory([{"role": "user", "text": "\u0645\u0631 x"}, {"role": "user", "text": "latin"}])  # Arabic
    with warnings.catch_warnings():
        warnings.simplefilter("error", RightToLeftWarning)
        layout_text("caf\u00e9 \u4e2d\u6587 \u0394", "tiny", font_size=12)  # left-to-right scripts: quiet


def test_tokenizer_spec_errors_are_clear():
    with pytest.raises(ValueError, match="os.sep is a str, not a callable"):
        make_counter("os:sep")
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod_xyz'"):
        make_counter("no_such_mod_xyz:f")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        make_counter("os.path:nope")
    with pytest.raises(ValueError, match="returned a float"):
        make_counter(lambda s: 1.5)("text")


@pytest.mark.parametrize("argv,needle", [
    (["--page-size", "100000x100000"], "over the limit"),
    (["--density", "nan"], "positive finite"),
    (["--batch-size", "0"], "must be >= 1"),
    (["--batch-size", "100000"], "over the limit of 256"),
    (["--max-tiles", "100"], "over the limit of 36"),
    (["--max-tiles", "0"], "at least 2"),
    (["--tokenizer", "os:sep"], "not a callable"),
    (["--font-size", "-4"], "must be >= 1"),
])
def test_cli_render_bad_arguments_one_line(tmp_path, capsys, argv, needle):
    src = tmp_path / "t.txt"
    src.write_text("some text to render", encoding="utf-8")
    out = tmp_path / "r"
    try:  # argparse-level checks exit through SystemExit, the rest return the status
        rc = _cli(["render", str(src), "-o", str(out), "-q"] + argv)
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err
    assert not out.exists() or not os.listdir(out)


def test_cli_render_interrupted_then_continued(tmp_path, capsys, monkeypatch):
    """Ctrl-C mid-run: one line, exit 130, whole files only; the rerun reuses the encoded batches."""
    from deepencoder.encoder import DeepEncoder

    src = tmp_path / "doc.txt"
    src.write_text("\n".join(f"line {i} " + "words " * 12 for i in range(70)), encoding="utf-8")
    out = tmp_path / "r"
    argv = ["render", str(src), "-o", str(out), "--mode", "tiny", "--font-size", "14", "--encode",
            "--config", "small-test", "--batch-size", "1", "-q"]
    real = DeepEncoder.encode
    calls = []

    def interrupting(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(DeepEncoder, "encode", interrupting)
    assert _cli(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    names = sorted(os.listdir(out))
    assert "summary.json" not in names and not any(".partial-" in n for n in names)
    assert [n for n in names if n.endswith(".png")] == ["page-0001.png", "page-0002.png"]
    calls.clear()
    monkeypatch.setattr(DeepEncoder, "encode", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    assert _cli(argv) == 0  # no --force needed: the same request continues
    s = json.loads((out / "summary.json").read_text())
    n = len(s["pages"])
    assert n >= 3 and len(calls) == n - 1  # page 1's batch was reused
    assert sorted(os.listdir(out)) == sorted([f"page-{i + 1:04d}.png" for i in range(n)]
                                             + ["encoded.safetensors", "layout.json", "summary.json"])
    assert _cli(argv) == 2  # a finished run is not redone without --force
    assert "--force" in capsys.readouterr().err
    assert _cli(argv[:-1] + ["--font-size", "12", "-q"]) == 2  # another request never reuses the folder
