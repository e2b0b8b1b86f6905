"""What each pipeline stage returns: a small frozen record, and the lines its command prints.

The study prints the same lines under each stage's heading, so a stage reads the same on the console
whether it ran from its own command or inside ``simpersona study``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.report import fidelity_text, markdown_table
from learners.data.canonical import ONE_EVENT_LABEL
from learners.data.mapping import RULE_LABEL
from learners.data.traces import ReplayReport

MAX_REASONS = 10
"""Quarantine reasons and dropped codes listed one per line; the rest are summed."""
EARLIEST_PLAUSIBLE = 1995
"""Events dated before this year are flagged (no web shop logged clicks earlier)."""
VQ_REPORTED = ("codes_in_use", "perplexity", "calinski_harabasz", "coherence", "nmi", "kruskal_conversion_p")
"""The fit report's figures printed beside the k-means baseline's."""


def count_lines(counts: dict[str, int], what: str, where: str) -> list[str]:
    """One line per key (most frequent first, as given), the rest summed after ``MAX_REASONS``."""
    items = list(counts.items())
    lines = [f"    {n:>10,}  {key}" for key, n in items[:MAX_REASONS]]
    if len(items) > MAX_REASONS:
        rest = sum(n for _, n in items[MAX_REASONS:])
        lines.append(f"    {rest:>10,}  ... {len(items) - MAX_REASONS} more {what} ({where})")
    return lines


def time_range_lines(span: dict[str, str] | None, now: datetime | None = None) -> list[str]:
    """The events' first and last time, and a warning when either is implausible for a clickstream
    (before ``EARLIEST_PLAUSIBLE`` or in the future): usually a timestamp in another unit."""
    if not span:
        return []
    first, last = (datetime.fromisoformat(span[k]).replace(tzinfo=UTC) for k in ("first", "last"))
    lines = [f"  events from {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC"]
    now = now or datetime.now(UTC)
    if first.year < EARLIEST_PLAUSIBLE or last > now + timedelta(days=1):
        lines.append(
            f"  check: events dated before {EARLIEST_PLAUSIBLE} or in the future: a timestamp in another unit"
            " (seconds for milliseconds?) or a stray value; timestamp: {min: ..., max: ...} in the mapping"
            " quarantines rows outside a range"
        )
    return lines


LONG_SESSION_SHARE = 0.01
"""Sessions lasting over a day in more than this share read as a session column that is a user's id."""


def session_span_lines(manifest: dict[str, Any]) -> list[str]:
    """A warning when many sessions last over a day: a visit is minutes to hours, so such a session
    column is more likely a user's (OTTO's "session" spans up to four weeks)."""
    long, sessions = manifest.get("sessions_over_a_day", 0), manifest["counts"]["sessions"]
    if not sessions or long <= LONG_SESSION_SHARE * sessions:
        return []
    return [
        f"  check: {long:,} sessions ({long / sessions:.0%}) last over a day: if the session column is a"
        " user's id, map it as buyer_id and leave session_id out, so visits split at 30 minutes without"
        " an event"
    ]


def day_month_lines(manifest: dict[str, Any]) -> list[str]:
    """A warning when the dates could read with day and month swapped (``day_month_open``)."""
    if not manifest.get("day_month_open"):
        return []
    return [
        "  check: no event's day of the month is above 12, so the dates read as well with day and month"
        " swapped (timestamp.format %d/%m or %m/%d): make sure the mapping reads them as the log means"
    ]


def one_type_lines(manifest: dict[str, Any]) -> list[str]:
    """prepare's and inspect's warning for a log of one event type with a product funnel to miss, or
    with no purchase at all."""
    types = manifest.get("events_by_type", {})
    if types and "purchase" not in types:
        return [
            "  check: no event is a purchase: every buyer type reads 'never converts' and conversion"
            " cannot be compared; map the log's order or transaction code to purchase if it has one"
        ]
    if len(types) != 1 or "product_view" in types:
        return []
    (kind,) = types
    return [
        f"  check: every event is a {kind}: no views or carts lead to it, so the buyer types and the agent"
        " have no shopping to learn, and evaluate's scores cannot tell simulators apart"
    ]


def one_kind_checks(real_kinds: set[str]) -> list[str]:
    """Evaluate's warning when the real visits take fewer than two kinds of action: a log of purchases
    only (UCI Online Retail) scores any simulator that buys as perfect."""
    if len(real_kinds) >= 2:
        return []
    kinds = ", ".join(sorted(real_kinds)) or "none"
    return [
        f"the real visits take one kind of action ({kinds}): any system that takes it scores as a perfect"
        " simulator, so these scores cannot tell systems apart; a log of views, carts and purchases can"
    ]


def code_labels(by_code: dict[str, int]) -> dict[str, int]:
    """Dropped rows' labels: a code quoted, a ``drop_rows`` rule and the repeats of one event as they
    name themselves."""
    return {
        code if code.startswith(RULE_LABEL) or code == ONE_EVENT_LABEL else f"code {code!r}": n
        for code, n in by_code.items()
    }


@dataclass(frozen=True)
class Prepared:
    """A prepared directory."""

    out: Path
    manifest: dict[str, Any]
    """Its manifest.json: inputs, config, counts, quarantine by reason, dropped rows by code."""
    seconds: float

    def lines(self) -> list[str]:
        c = self.manifest["counts"]
        rate = c["events"] / self.seconds if self.seconds > 0 else float("inf")
        lines = [
            f"prepared {c['events']:,} events of {c['rows_read']:,} rows in {self.seconds:.1f} s"
            f" ({rate:,.0f} events/s)",
            f"  buyers {c['buyers']:,}  sessions {c['sessions']:,}  merchants {c['merchants']:,}"
            f"  products {c['products']:,}",
            *time_range_lines(self.manifest.get("time_range")),
            *session_span_lines(self.manifest),
            *one_type_lines(self.manifest),
            *day_month_lines(self.manifest),
            f"  quarantined {c['rows_quarantined']:,} rows",
        ]
        lines += count_lines(self.manifest["quarantine_by_reason"], "reasons", "see manifest.json")
        if c.get("rows_dropped"):
            lines.append(f"  dropped on purpose {c['rows_dropped']:,} rows (event_type.drop, drop_rows)")
            by_code = code_labels(self.manifest["rows_dropped_by_code"])
            lines += count_lines(by_code, "codes", "see manifest.json")
        return [*lines, f"  wrote {self.out} (see `simpersona inspect {self.out}`)"]


@dataclass(frozen=True)
class PersonasFitted:
    """A fitted VQ-VAE run; with its report, the training buyers' codes and the report's figures."""

    run_dir: Path
    epochs_done: int
    codes: int
    codes_in_use: int
    perplexity: float
    stopped: bool
    """The run ended early on purpose (stop_after_epoch); continue it with resume."""
    assigned: int | None = None
    """Buyers assigned a code (None: no report)."""
    quarantined: int | None = None
    metrics: dict[str, Any] | None = None
    """The report's figures (metrics.json), with the k-means baseline's under ``kmeans``."""

    def lines(self) -> list[str]:
        lines = [
            f"fitted {self.epochs_done} epochs -> {self.run_dir}  (codes in use {self.codes_in_use}/"
            f"{self.codes}, perplexity {self.perplexity:.1f})"
        ]
        if self.stopped:
            return [*lines, f"stopped after epoch {self.epochs_done}; continue with --resume"]
        if self.assigned is not None:
            lines.append(
                f"assigned {self.assigned:,} buyers ({self.quarantined:,} quarantined) "
                f"-> {self.run_dir / 'codes.parquet'}"
            )
        if self.metrics is not None:
            km = self.metrics["kmeans"]
            for key in VQ_REPORTED:
                if key in self.metrics:
                    lines.append(f"  {key:22s} VQ-VAE {self.metrics[key]:.4g}   k-means {km[key]:.4g}")
            lines.append(f"report: {self.run_dir / 'report.html'}")
        return lines


@dataclass(frozen=True)
class Assigned:
    """Every buyer's code and each merchant's distribution over codes."""

    out: Path
    buyers_read: int
    buyers_assigned: int
    buyers_quarantined: int
    seconds: float

    def lines(self) -> list[str]:
        rate = self.buyers_read / self.seconds if self.seconds > 0 else float("inf")
        return [
            f"assigned {self.buyers_assigned:,} of {self.buyers_read:,} buyers "
            f"({self.buyers_quarantined:,} quarantined) in {self.seconds:.2f} s ({rate:,.0f} buyers/s) -> {self.out}"
        ]


@dataclass(frozen=True)
class VisitsAssigned:
    """Every visit's code from the buyer's other visits (learners/vqvae/other_visits.py)."""

    out: Path
    visits: int
    visits_from_other_visits: int
    visits_with_own_code: int
    visits_without_code: int
    left_out_quarantined: int
    seconds: float

    def lines(self) -> list[str]:
        return [
            f"coded {self.visits:,} visits in {self.seconds:.2f} s: {self.visits_from_other_visits:,} from the"
            f" buyer's other visits, {self.visits_with_own_code:,} of one-visit buyers by their own code,"
            f" {self.visits_without_code:,} without a code ({self.left_out_quarantined:,} other-visit"
            f" histories quarantined) -> {self.out}"
        ]


@dataclass(frozen=True)
class TracesReplayed:
    """traces.parquet and how well the real events mapped onto storefront actions."""

    out: Path
    report: ReplayReport

    def lines(self) -> list[str]:
        return [*self.report.lines(), f"  wrote {self.out}"]


@dataclass(frozen=True)
class AgentTrained:
    """A fine-tuned agent directory and its training record."""

    out: Path
    epochs: list[dict[str, Any]]
    """This run's epochs (loss, tokens/s; validation loss with validation examples)."""
    chosen: dict[int, int]
    """The epoch each stage kept."""
    examples: int
    quarantined: int
    validation_examples: int
    rollout_calibration: str | None = None
    """The rollout calibration's line (engine/rollout_calibration.py), or why it was skipped; None when off."""

    def lines(self) -> list[str]:
        lines = []
        for e in self.epochs:
            validation = f", validation loss {e['val_loss']:.4f}" if e.get("val_loss") is not None else ""
            lines.append(
                f"  stage {e['stage']} epoch {e['epoch']}: loss {e['loss']:.4f}{validation},"
                f" {e['tokens_per_s']:,.0f} tokens/s"
            )
        if self.validation_examples:
            kept = ", ".join(f"stage {stage}: epoch {epoch}" for stage, epoch in sorted(self.chosen.items()))
            lines.append(f"  kept (lowest validation loss, {self.validation_examples:,} examples): {kept}")
        if self.rollout_calibration:
            lines.append("  " + self.rollout_calibration)
        lines.append(
            f"{self.examples:,} examples ({self.quarantined:,} trace rows quarantined) -> {self.out}"
        )
        return lines


@dataclass(frozen=True)
class MarkovFitted:
    """The per-type Markov chain's JSON file and what it was fitted on."""

    out: Path
    examples: int
    source: str

    def lines(self) -> list[str]:
        return [
            f"fitted the per-type Markov chain on {self.examples:,} examples of {self.source} -> {self.out}"
        ]


@dataclass(frozen=True)
class Simulated:
    """A simulation's rollouts and manifest."""

    out: Path
    manifest: dict[str, Any]

    @property
    def complete(self) -> bool:
        return self.manifest["buyers_completed"] == self.manifest["buyers_requested"]

    def lines(self) -> list[str]:
        m = self.manifest
        return [
            f"simulated {m['buyers_completed']:,} of {m['buyers_requested']:,} buyers, {m['steps']:,} steps"
            f" ({m['invalid_steps']:,} invalid) in {m['elapsed_s']:.1f} s; rollouts in {self.out / 'rollouts'}"
        ]


@dataclass(frozen=True)
class Evaluated:
    """A fidelity report: every system's metrics, with intervals, ceiling and floor."""

    report: Path
    """The report's index.html."""
    systems: dict[str, dict[str, Any]]
    """Every system's metrics (the report's ``details``)."""
    fidelity: dict[str, Any]
    """``engine.bootstrap.uncertainty``'s intervals, bounds and paired differences."""
    goal_success: dict[str, float | None]
    """Goal success of the systems given goal-task rollouts."""
    notes: str
    merchants: int
    """Merchants compared (the fewest any system was compared on)."""
    checks: list[str] = field(default_factory=list)
    """What makes these scores read otherwise than they seem (also in ``notes``)."""

    def lines(self) -> list[str]:
        return [
            fidelity_text(self.fidelity),
            "",
            markdown_table(self.systems),
            *(f"check: {c}" for c in self.checks),
            f"report: {self.report}",
        ]
