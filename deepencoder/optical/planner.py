"""Memory decay: newer turns stay text, older turns become pages encoded at falling resolution.

DeepSeek-OCR's proposal (paper, section "memory forgetting"): keep recent context as text, render older
context to images and shrink them with age, so a long conversation fades instead of being cut off.

Representation ladder, highest fidelity first; each model family offers its own modes::

    ocr1 (DeepSeek-OCR):    text → gundam → large → base → small → tiny (→ dropped, only when asked)
    ocr2 (DeepSeek-OCR 2):  text → gundam → base                        (→ dropped, only when asked)

DeepSeek-OCR 2 has one global view size (1024, 257 tokens) and 768 crops (144 tokens each), so its only
steps are "with crops" (gundam) and "global view only" (base); below base a turn can only be dropped.
Its default page is 1536x1536 (``--page-mode gundam``): gundam 4 x 144 + 257 = 833 tokens, base 257.

Every image level encodes the *same* pages (one page geometry; ocr1 default 1280x1280 with a font chosen
for ~40 characters per Large vision token, ocr2 1536x1536 with ~40 per Gundam token); only the encoder
mode changes, so a step down the ladder keeps the text and spends fewer vision tokens on it (ocr1
1280x1280 page: Gundam 693, Large 421, Base 273, Small 111, Tiny 73; ocr2 1536x1536 page: Gundam 833,
Base 257; from :func:`deepencoder.modes.vision_token_count`). Turns that share a level share
pages (a transcript with a bold label row per turn), so short old turns do not each pay a full page.

Two steps:

1. Schedule: each turn gets a level from its age (``text`` below 4 turns, ``gundam`` below 8, ...).
2. Fit (``budget`` given): while the total exceeds the budget, the oldest turn not yet at the floor
   (ocr1 Tiny, ocr2 Base) goes one level down. Older turns are always at the floor when a turn moves, so the order
   "older never has a higher fidelity than newer" holds at every step. If all-floor still does not fit,
   ``on_overflow="error"`` raises :class:`BudgetError` (saying what the cheapest plan costs);
   ``on_overflow="drop"`` drops the oldest turns, which the plan lists in ``dropped``.

Age order: larger age is older; equal ages are ordered by position in the input (earlier is older).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..modes import check_family, get_mode, resolve_max_tiles
from .render import (
    DEFAULT_DENSITY,
    Layout,
    PageGeometry,
    _Row,
    choose_geometry,
    layout_rows,
    layout_transcript,
    transcript_rows,
    warn_missing,
    warn_rtl,
)
from .tokens import TokenCounter, make_counter, vision_tokens_per_page

LADDER = ("text", "gundam", "large", "base", "small", "tiny")  # ocr1
FAMILY_LADDERS = {"ocr1": LADDER, "ocr2": ("text", "gundam", "base")}
DROPPED = "dropped"
DEFAULT_PAGE_MODE = "large"  # ocr1
DEFAULT_PAGE_MODES = {"ocr1": "large", "ocr2": "gundam"}
DEFAULT_SCHEDULES = {  # ocr1
    "turns": "text:4,gundam:8,large:16,base:32,small:64,tiny",
    "seconds": "text:1h,gundam:6h,large:1d,base:3d,small:1w,tiny",
}
# ocr2: the same first bound as ocr1 for text; gundam until ocr1's turn from large to base (16 turns, 1 day),
# since ocr2's base costs about ocr1's base (257 vs 273 tokens) and its gundam about ocr1's (833 vs 693)
FAMILY_SCHEDULES = {"ocr1": DEFAULT_SCHEDULES,
                    "ocr2": {"turns": "text:4,gundam:16,base", "seconds": "text:1h,gundam:1d,base"}}
_FAMILY_NAMES = {"ocr1": "DeepSeek-OCR", "ocr2": "DeepSeek-OCR 2"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class BudgetError(ValueError):
    pass


class ConversationError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------- input
@dataclass
class Turn:
    role: str
    text: str
    age: Optional[float] = None
    timestamp: Optional[datetime] = None
    index: int = -1  # position in the input, oldest first by convention


def _parse_time(s, where: str) -> datetime:
    if isinstance(s, datetime):
        return s
    if not isinstance(s, str):
        raise ConversationError(f"{where}: timestamp must be an ISO 8601 string, got {s!r}")
    try:
        return datetime.fromisoformat(s.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as e:
        raise ConversationError(f"{where}: cannot parse timestamp {s!r} as ISO 8601 ({e})") from None


def turns_from_records(items: Sequence[dict], source: str = "conversation") -> List[Turn]:
    """Validate ``[{"role", "text", "age" | "timestamp"}, ...]`` (oldest first) into :class:`Turn` s."""
    if not isinstance(items, (list, tuple)):
        raise ConversationError(f"{source}: expected a list of turns, got {type(items).__name__}")
    if not items:
        raise ConversationError(f"{source}: the conversation has no turns")
    out = []
    for i, it in enumerate(items):
        where = f"{source}: turn {i}"
        if isinstance(it, Turn):
            out.append(Turn(it.role, it.text, it.age, it.timestamp, i))
            continue
        if not isinstance(it, dict):
            raise ConversationError(f"{where}: expected an object, got {type(it).__name__}")
        text = it.get("text", it.get("content"))
        if not isinstance(text, str):
            raise ConversationError(f"{where}: 'text' must be a string")
        role = it.get("role", "unknown")
        if not isinstance(role, str):
            raise ConversationError(f"{where}: 'role' must be a string")
        age = it.get("age")
        if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float)) or age < 0
                                or not math.isfinite(age)):
            raise ConversationError(f"{where}: 'age' must be a non-negative number, got {age!r}")
        ts = it.get("timestamp")
        out.append(Turn(role, text, age, _parse_time(ts, where) if ts is not None else None, i))
    return out


def load_conversation(path: str, data: Optional[str] = None) -> List[Turn]:
    """A JSON list of turns, ``{"turns": [...]}``, one turn object, or JSONL (one turn object per line);
    ``-`` is stdin. ``data``: the file's text when already read (``path`` then only names it)."""
    import sys

    if data is not None:
        pass
    elif path == "-":
        data = sys.stdin.read()
    else:
        with open(path, encoding="utf-8") as f:
            data = f.read()
    if not data.strip():
        raise ConversationError(f"{path}: the file is empty")
    try:
        obj = json.loads(data)
    except json.JSONDecodeError:
        obj = []
        for k, line in enumerate(data.splitlines()):
            if line.strip():
                try:
                    obj.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConversationError(f"{path}: line {k + 1} is neither part of a JSON document nor a "
                                            f"JSONL object ({e})") from None
    if isinstance(obj, dict):
        if "turns" in obj:
            obj = obj["turns"]
        elif "text" in obj or "content" in obj:  # JSONL with a single line: one turn
            obj = [obj]
        else:
            raise ConversationError(f"{path}: a JSON object must be one turn (with 'text') or hold the list of "
                                    "turns under 'turns'")
    return turns_from_records(obj, path)


def resolve_ages(turns: Sequence[Turn], unit: str = "turns",
                 now: Union[None, str, datetime] = None) -> Tuple[List[float], str]:
    """Ages of the turns and their unit.

    All turns with ``age``: those, in ``unit``. All with ``timestamp``: seconds before ``now`` (default:
    the newest timestamp). None of either: position, the last turn has age 0 (unit "turns").
    """
    has_age = [t.age is not None for t in turns]
    has_ts = [t.timestamp is not None for t in turns]
    if all(has_age):
        if unit not in ("turns", "seconds"):
            raise ConversationError(f"age unit must be 'turns' or 'seconds', got {unit!r}")
        return [float(t.age) for t in turns], unit
    if all(has_ts) and not any(has_age):
        stamps = [t.timestamp for t in turns]
        ref = _parse_time(now, "--now") if now is not None else max(stamps)
        try:
            ages = [(ref - s).total_seconds() for s in stamps]
        except TypeError:
            raise ConversationError("timestamps mix time-zone-aware and naive values (and --now); give all "
                                    "of them an offset such as +00:00 or none") from None
        if min(ages) < 0:
            raise ConversationError(f"a timestamp is later than 'now' ({ref.isoformat()})")
        return ages, "seconds"
    if not any(has_age) and not any(has_ts):
        n = len(turns)
        return [float(n - 1 - i) for i in range(n)], "turns"
    raise ConversationError("turns mix 'age', 'timestamp' and neither: give every turn an 'age', or every turn a "
                            "'timestamp', or none (then the position is the age)")


# ---------------------------------------------------------------------------------------------- schedule
def _parse_bound(s: str, unit: str) -> float:
    s = s.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", s)
    if not m:
        raise ValueError(f"bad age bound {s!r}: a number, with s/m/h/d/w for seconds")
    v = float(m.group(1))
    if m.group(2):
        if unit != "seconds":
            raise ValueError(f"age bound {s!r} has a time suffix but ages are in {unit}")
        v *= _UNITS[m.group(2)]
    return v


@dataclass(frozen=True)
class Schedule:
    """Level by age: ``levels[k]`` for ``bounds[k-1] <= age < bounds[k]``; the last level takes the rest."""

    levels: Tuple[str, ...]
    bounds: Tuple[float, ...]
    unit: str = "turns"
    family: str = "ocr1"

    def __post_init__(self):
        fam = check_family(self.family)
        object.__setattr__(self, "family", fam)
        ladder = FAMILY_LADDERS[fam]
        if not self.levels or len(self.bounds) != len(self.levels) - 1:
            raise ValueError("a schedule needs one upper age bound per level except the last")
        idx = []
        for lv in self.levels:
            if lv not in ladder:
                if any(lv in other for other in FAMILY_LADDERS.values()):
                    raise ValueError(f"schedule level {lv!r} is not a mode of model family {fam!r} "
                                     f"({_FAMILY_NAMES[fam]}): its ladder is {' > '.join(ladder)}")
                raise ValueError(f"unknown level {lv!r}: choose from {', '.join(ladder)} (model family {fam!r})")
            idx.append(ladder.index(lv))
        if any(b <= a for a, b in zip(idx, idx[1:])):
            raise ValueError(f"schedule levels must follow the ladder {' > '.join(ladder)} (falling "
                             f"resolution), got {' > '.join(self.levels)}")
        if any(b <= a for a, b in zip(self.bounds, self.bounds[1:])) or any(b <= 0 for b in self.bounds):
            raise ValueError(f"schedule age bounds must be positive and increasing, got {list(self.bounds)}")

    @staticmethod
    def parse(spec: Optional[str] = None, unit: str = "turns", family: str = "ocr1") -> "Schedule":
        """``"level:bound,...,level"`` (None: the family's default, :data:`FAMILY_SCHEDULES`)."""
        family = check_family(family)
        spec = spec or FAMILY_SCHEDULES[family][unit]
        levels, bounds = [], []
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        for k, p in enumerate(parts):
            name, colon, b = p.partition(":")
            levels.append(name.strip().lower())
            if k < len(parts) - 1:
                if not b:
                    raise ValueError(f"schedule entry {p!r} needs an upper age bound (level:bound)")
                bounds.append(_parse_bound(b, unit))
            elif colon:  # a bound here would be dropped silently: the last level takes every older age
                raise ValueError(f"the last schedule entry {p!r} takes every older age and has no bound; "
                                 f"write {name.strip()!r}")
        return Schedule(tuple(levels), tuple(bounds), unit, family)

    def level_for(self, age: float) -> str:
        for lv, b in zip(self.levels, self.bounds):
            if age < b:
                return lv
        return self.levels[-1]

    def describe(self) -> str:
        parts = [f"{lv} < {b:g}" for lv, b in zip(self.levels, self.bounds)]
        return ", ".join(parts + [f"{self.levels[-1]} beyond"]) + f" ({self.unit})"


def effective_ladder(geometry: PageGeometry, max_tiles: Optional[int] = None,
                     family: str = "ocr1") -> Tuple[List[str], Dict[str, int]]:
    """Levels of ``family`` whose vision tokens per page strictly fall along its ladder, and those counts.

    Gundam only outranks the next level when the page is big enough to be cut into tiles: on a page of
    640 or less (ocr1) it is its 1024 global view alone (273 tokens, as Base, below Large), on a page of
    768 or less (ocr2) its global view alone (257, the same as ocr2's base), so it is left out.
    """
    family = check_family(family)
    full = FAMILY_LADDERS[family]
    size = (geometry.width, geometry.height)
    per = {m: vision_tokens_per_page(size, m, max_tiles, family) for m in full[1:]}
    levels = ["text"] + [m for m in full[1:] if m != "gundam" or per["gundam"] > per[full[2]]]
    imgs = levels[1:]
    if any(per[b] >= per[a] for a, b in zip(imgs, imgs[1:])):  # cannot happen with the SPEC's modes
        raise AssertionError(f"vision tokens do not fall along the ladder: {per}")
    return levels, {m: per[m] for m in imgs}


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class Block:
    """Turns sharing one level, rendered together (oldest first) on shared pages."""

    level: str
    turns: List[int]
    rows: int = 0
    pages: int = 0
    tokens_per_page: int = 0
    tokens: int = 0
    text_tokens: int = 0


@dataclass
class Plan:
    turns: List[Turn]
    ages: List[float]
    age_unit: str
    order: List[int]  # input indices, oldest first
    scheduled: List[str]  # level per turn (input order) from the schedule alone
    levels: List[str]  # level per turn after fitting (DROPPED for dropped turns)
    geometry: PageGeometry
    page_mode: str
    ladder: List[str]
    tokens_per_page: Dict[str, int]
    text_tokens: List[int]
    turn_rows: List[List[_Row]]
    counter_name: str
    counter_is_estimate: bool
    schedule: Schedule
    budget: Optional[int]
    markdown: bool = True
    max_tiles: Optional[int] = None  # None: the family's Gundam default
    steps: int = 0
    dropped: List[int] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    family: str = "ocr1"

    # -- costs
    @property
    def cost_all_text(self) -> int:
        return sum(self.text_tokens)

    def cost_of(self, levels: Sequence[str]) -> int:
        return sum(b.tokens for b in self.blocks(levels))

    @property
    def cost_scheduled(self) -> int:
        return self.cost_of(self.scheduled)

    @property
    def cost(self) -> int:
        return self.cost_of(self.levels)

    def blocks(self, levels: Optional[Sequence[str]] = None) -> List[Block]:
        """One block per level in use, oldest level first (the order of the assembled context)."""
        levels = self.levels if levels is None else levels
        out = []
        for lv in reversed(self.ladder):
            members = [i for i in self.order if levels[i] == lv]
            if not members:
                continue
            b = Block(lv, members, text_tokens=sum(self.text_tokens[i] for i in members))
            if lv == "text":
                b.tokens = b.text_tokens
            else:
                b.rows = transcript_rows([len(self.turn_rows[i]) for i in members])
                b.pages = math.ceil(b.rows / self.geometry.rows)
                b.tokens_per_page = self.tokens_per_page[lv]
                b.tokens = b.pages * b.tokens_per_page
            out.append(b)
        return out

    def label(self, i: int) -> str:
        return f"{self.turns[i].role} (turn {i}, age {_fmt_age(self.ages[i], self.age_unit)})"

    def layout_block(self, block: Block) -> Layout:
        """The pages of an image block; their count equals ``block.pages`` (checked)."""
        items = [(i, self.label(i), self.turn_rows[i]) for i in block.turns]
        lay = layout_transcript(items, self.geometry, {i: self.turns[i].text for i in block.turns}, self.markdown)
        if lay.num_pages != block.pages:
            raise AssertionError(f"{block.level}: planned {block.pages} pages, laid out {lay.num_pages}")
        return lay

    def check(self) -> None:
        """The two invariants: within budget, and fidelity never rises with age."""
        if self.budget is not None and self.cost > self.budget:
            raise AssertionError(f"plan costs {self.cost} tokens, over the budget of {self.budget}")
        rank = {lv: k for k, lv in enumerate(self.ladder + [DROPPED])}
        seq = [rank[self.levels[i]] for i in self.order]  # oldest first: must not increase
        if any(b > a for a, b in zip(seq, seq[1:])):
            raise AssertionError("an older turn has a higher resolution than a newer one")

    def as_dict(self) -> dict:
        return {
            "family": self.family,
            "budget": self.budget,
            "tokens_all_text": self.cost_all_text,
            "tokens_scheduled": self.cost_scheduled,
            "tokens_planned": self.cost,
            "text_tokenizer": self.counter_name,
            "text_tokens_are_estimates": self.counter_is_estimate,
            "schedule": self.schedule.describe(),
            "age_unit": self.age_unit,
            "ladder": self.ladder,
            "page_mode": self.page_mode,
            "max_tiles": resolve_max_tiles(get_mode("gundam", self.family), self.max_tiles),
            "page": self.geometry.as_dict(),
            "vision_tokens_per_page": self.tokens_per_page,
            "degradation_steps": self.steps,
            "dropped_turns": self.dropped,
            "notes": self.notes,
            "turns": [{"turn": i, "role": t.role, "age": self.ages[i], "chars": len(t.text),
                       "text_tokens": self.text_tokens[i], "scheduled": self.scheduled[i],
                       "level": self.levels[i]} for i, t in enumerate(self.turns)],
            "blocks": [b.__dict__ for b in self.blocks()],
        }


def _fmt_age(age: float, unit: str) -> str:
    if unit == "turns":
        return f"{age:g}"
    for suf, sec in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if age >= sec:
            return f"{age / sec:.3g}{suf}"
    return f"{age:g}s"


def plan_memory(turns: Sequence[Union[Turn, dict]], budget: Optional[int] = None,
                schedule: Union[None, str, Schedule] = None, tokenizer=None, age_unit: str = "turns",
                now=None, page_mode: Optional[str] = None, density: float = DEFAULT_DENSITY,
                font_size: Optional[int] = None, page_size: Optional[Tuple[int, int]] = None,
                markdown: bool = True, max_tiles: Optional[int] = None, on_overflow: str = "error",
                geometry: Optional[PageGeometry] = None, family: str = "ocr1") -> Plan:
    """Schedule a conversation (oldest turn first) by age and fit it into ``budget`` total tokens.

    ``family``: the model family whose modes, token counts and ladder are used ("ocr1" DeepSeek-OCR,
    "ocr2" DeepSeek-OCR 2; see :data:`FAMILY_LADDERS`). ``page_mode`` None: the family's
    :data:`DEFAULT_PAGE_MODES` (ocr1 large 1280x1280, ocr2 gundam 1536x1536); ``schedule`` None: the
    family's :data:`FAMILY_SCHEDULES`; ``max_tiles`` None: the family's Gundam MAX (ocr1 9, ocr2 6).

    Returns a :class:`Plan` whose ``levels[i]`` is turn ``i``'s representation. Raises BudgetError
    when even every turn at the floor exceeds the budget and ``on_overflow`` is "error".
    """
    family = check_family(family)
    if on_overflow not in ("error", "drop"):
        raise ValueError(f"on_overflow must be 'error' or 'drop', got {on_overflow!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise ValueError(f"budget must be a non-negative integer number of tokens, got {budget!r}")
    turns = turns_from_records(list(turns))
    ages, unit = resolve_ages(turns, age_unit, now)
    sched = schedule if isinstance(schedule, Schedule) else Schedule.parse(schedule, unit, family)
    if sched.family != family:
        raise ValueError(f"the schedule was made for model family {sched.family!r}, the plan is for {family!r}")
    if sched.unit != unit:
        raise ValueError(f"the schedule's ages are in {sched.unit} but the conversation's are in {unit}")
    counter: TokenCounter = make_counter(tokenizer)
    page_mode = get_mode(DEFAULT_PAGE_MODES[family] if page_mode is None else page_mode, family).name
    max_tiles = resolve_max_tiles(get_mode("gundam", family), max_tiles)
    g = geometry or choose_geometry(page_mode, density, font_size, page_size, max_tiles=max_tiles, family=family)
    ladder, per_page = effective_ladder(g, max_tiles, family)
    full = FAMILY_LADDERS[family]
    notes = []

    n = len(turns)
    order = sorted(range(n), key=lambda i: (-ages[i], i))
    scheduled = []
    for i in range(n):
        lv = sched.level_for(ages[i])
        if lv not in ladder:  # gundam on a page too small for tiles
            lv = full[full.index(lv) + 1] if full.index(lv) + 1 < len(full) else ladder[-1]
            msg = (f"gundam is not above {lv} on a {g.width}x{g.height} page (no tiles); "
                   f"scheduled gundam turns use {lv}")
            if msg not in notes:
                notes.append(msg)
        scheduled.append(lv)
    text_tokens = [counter(t.text) for t in turns]
    missing = None
    turn_rows = []
    for i, t in enumerate(turns):
        rows, miss = layout_rows(t.text, g.cols, markdown, src=i)
        turn_rows.append(rows)
        missing = miss if missing is None else missing + miss
    warn_missing(missing)
    warn_rtl("".join(t.text for t in turns))

    plan = Plan(turns, ages, unit, order, scheduled, list(scheduled), g, page_mode, ladder, per_page, text_tokens,
                turn_rows, counter.name, counter.is_estimate, sched, budget, markdown, max_tiles, notes=notes,
                family=family)
    if budget is not None:
        _fit(plan, budget, on_overflow)
    plan.check()
    return plan


def _fit(plan: Plan, budget: int, on_overflow: str) -> None:
    """Degrade the oldest non-floor turn one level at a time until the plan fits (O(1) per step)."""
    ladder, R = plan.ladder, plan.geometry.rows
    rank = [ladder.index(lv) for lv in plan.levels]
    floor = len(ladder) - 1
    nrows = [len(r) for r in plan.turn_rows]
    rows_sum = [0] * len(ladder)
    count = [0] * len(ladder)
    for i, r in enumerate(rank):
        rows_sum[r] += nrows[i]
        count[r] += 1

    def level_cost(k: int) -> int:
        if k == 0:
            return rows_sum[0]  # for the text level rows_sum holds text tokens (set below)
        if count[k] == 0:
            return 0
        rows = rows_sum[k] + count[k] + (count[k] - 1)
        return math.ceil(rows / R) * plan.tokens_per_page[ladder[k]]

    rows_sum[0] = sum(plan.text_tokens[i] for i, r in enumerate(rank) if r == 0)
    costs = [level_cost(k) for k in range(len(ladder))]
    total = sum(costs)

    def move(i: int, src: int, dst: Optional[int]) -> None:
        nonlocal total
        for k, sign in ((src, -1), (dst, 1)):
            if k is None:
                continue
            rows_sum[k] += sign * (plan.text_tokens[i] if k == 0 else nrows[i])
            count[k] += sign
            total -= costs[k]
            costs[k] = level_cost(k)
            total += costs[k]

    p = 0
    order = plan.order
    while total > budget:
        while p < len(order) and rank[order[p]] == floor:
            p += 1
        if p == len(order):
            break
        i = order[p]
        move(i, rank[i], rank[i] + 1)
        rank[i] += 1
        plan.steps += 1
    plan.levels = [ladder[r] for r in rank]
    if total <= budget:
        return
    floor_block = plan.blocks([ladder[floor]] * len(rank))[0]
    if on_overflow == "error":
        raise BudgetError(
            f"a budget of {budget} tokens cannot hold this conversation: the cheapest plan, all {len(rank)} "
            f"turns as {ladder[floor]} pages, costs {floor_block.tokens} tokens ({floor_block.pages} pages x "
            f"{floor_block.tokens_per_page}). Raise the budget, or let the oldest turns be dropped "
            "(on_overflow='drop', CLI --drop-oldest); dropped turns are listed in the report.")
    for i in order:  # all at the floor now; drop from the oldest
        if total <= budget:
            break
        move(i, floor, None)
        plan.levels[i] = DROPPED
        plan.dropped.append(i)
    kept = len(rank) - len(plan.dropped)
    ids = plan.dropped if len(plan.dropped) <= 12 else plan.dropped[:6] + ["..."] + plan.dropped[-3:]
    msg = (f"budget {budget} < cheapest plan ({floor_block.tokens} tokens): DROPPED the {len(plan.dropped)} oldest "
           f"turn(s) {', '.join(map(str, ids))}; {kept} turn(s) kept")
    plan.notes.append(msg)
    warnings.warn(msg, stacklevel=3)
