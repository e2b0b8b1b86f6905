"""What a study plan holds (StudyPlan and its parts) and its two forms: the printed table and
OUT/plan.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.plan_calibration import Rate

PLAN_FILE = "plan.json"


@dataclass
class SplitCounts:
    """The split the study will use (split.json) and the real sessions on each side of it."""

    merchants: int
    eligible: int
    heldout: int
    training: int
    traced: int
    """Training merchants replayed into traces (eligible and not held out)."""
    heldout_sessions: int
    """Real sessions of the held-out merchants (the same-window variant compares with all of them)."""
    strict_sessions: int | None
    """... of them starting at or after the strict variant's cutoff (None without that variant)."""
    cutoff: str | None
    replayed_sessions: int
    replayed_real_events: int
    replayed_mapped_events: int
    replayed_steps: int
    """Exact: the steps of traces built the way the study builds them."""
    inserted_steps: int
    traces_seconds: float


@dataclass
class AgentPlan:
    """One trained agent: what it trains on and how long that takes here."""

    key: str
    base_model: str
    examples: int
    tokens_per_epoch: int
    """Prompt + target tokens of one pass over the examples (what the training loop counts), at most
    the agent's token budget (``max_tokens``)."""
    epochs: int
    """Passes over the examples: stage 1 (persona agent) + stage 2."""
    counted: str
    """How the tokens were counted (all examples, or a sample scaled up)."""
    rate: str | None
    """The calibration Rate the time comes from (None: the model could not be loaded)."""
    seconds: float | None


@dataclass
class SimPlan:
    """One system's simulations (free shopping, or its goal tasks): runs, visits and steps."""

    system: str
    policy: str
    visits_per_run: dict[str, int]
    """Visits of each distinct run: a variant, "shared" (a run that does not depend on the variant:
    no persona, or uniform codes) or "goals"."""
    steps_per_visit: float
    steps_per_visit_basis: str
    steps_max: int
    """Every visit running to its step limit."""
    rate: str | None
    parallel: int
    """Processes stepping at once: the runners for policies played in them, else one policy server."""
    seconds: float | None

    @property
    def visits(self) -> int:
        return sum(self.visits_per_run.values())

    @property
    def steps_expected(self) -> int:
        return round(self.visits * self.steps_per_visit)


@dataclass
class StageRow:
    """One line of the plan's table."""

    stage: str
    work: str
    seconds: float | None
    """None: not estimated (left out of the total)."""
    basis: str
    done: bool = False
    """Done by the plan itself (prepare, split), which the study then reuses: left out of the total."""


@dataclass
class StudyPlan:
    """Everything ``--plan`` prints, also written to OUT/plan.json."""

    config: dict
    split: SplitCounts
    agents: list[AgentPlan]
    simulations: list[SimPlan]
    calibration: list[Rate]
    stages: list[StageRow]
    calibration_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.stages if r.seconds is not None and not r.done)

    def to_dict(self) -> dict:
        out = asdict(self)
        for sim, plain in zip(self.simulations, out["simulations"], strict=True):
            plain.update(visits=sim.visits, steps_expected=sim.steps_expected)
        return out | {"total_seconds": round(self.total_seconds, 1)}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not estimated"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by `` | ``; the last column is not padded."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]

    def line(row: Sequence[str]) -> str:
        return " | ".join([*(v.ljust(w) for v, w in zip(row, widths, strict=False)), row[-1]]).rstrip()

    return [line(header), "-|-".join("-" * w for w in [*widths, len(header[-1])]), *map(line, rows)]


def format_plan(plan: StudyPlan) -> str:
    """The plan as text: the counts, the calibration, then stage | work | estimated time | from."""
    s = plan.split
    lines = [
        f"merchants: {s.merchants:,} in all, {s.eligible:,} eligible; {s.heldout:,} held out, "
        f"{s.training:,} training ({s.traced:,} of them replayed into traces)",
        f"real sessions: {s.heldout_sessions:,} of the held-out merchants"
        + (f" ({s.strict_sessions:,} from the strict cutoff {s.cutoff[:10]} on)" if s.cutoff else "")
        + f"; {s.replayed_sessions:,} replayed",
        f"replayed steps: {s.replayed_steps:,} = {s.replayed_mapped_events:,} real events (of "
        f"{s.replayed_real_events:,}) + {s.inserted_steps:,} inserted navigation/exit steps, "
        f"{s.replayed_steps / max(s.replayed_mapped_events, 1):.1f}x the events",
    ]
    for a in plan.agents:
        lines.append(
            f"agent {a.key} ({a.base_model}): {a.examples:,} examples, {a.tokens_per_epoch:,} tokens per epoch"
            f" x {a.epochs} epochs = {a.tokens_per_epoch * a.epochs:,} training tokens"
        )
    for sim in plan.simulations:
        runs = ", ".join(f"{run} {n:,}" for run, n in sim.visits_per_run.items())
        lines.append(f"visits of {sim.system}: {sim.visits:,} ({runs}); at most {sim.steps_max:,} steps")
    lines += [
        "",
        f"calibration on this machine, one thread each but training ({plan.calibration_seconds:.0f} s):",
    ]
    lines += [
        f"  {r.name:<28} {r.per_s:>12,.1f} {r.unit}/s  ({r.basis})"
        if r.unit != "commands"
        else f"  {r.name:<28} {1 / r.per_s:>12,.1f} s each  ({r.basis})"
        for r in plan.calibration
    ]
    rows = [
        (r.stage, r.work, _duration(r.seconds) + (", done" if r.done else ""), r.basis) for r in plan.stages
    ]
    rows.append(("total", "", _duration(plan.total_seconds), "the estimated stages still to run"))
    lines += ["", *_table(("stage", "work", "estimated time", "from"), rows)]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def write_plan(plan: StudyPlan, out: str | Path) -> Path:
    """OUT/plan.json: the plan's counts, calibration and stages."""
    path = Path(out) / PLAN_FILE
    path.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    return path
