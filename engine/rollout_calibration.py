"""Rollout calibration: an agent's per-kind biases refined on visits it walks itself.

Per-step calibration (learners/agent/calibration.py) makes the agent's choice probabilities match
real buyers' on the validation merchants' real pages. A simulated visit walks the agent's own pages,
and a buyer's choices within a visit depend on each other. Measured on Tmall IJCAI-15 (issue 15,
session 12's study agent): its simulated buyers favourited as often per visit as the real ones on
the training sellers (0.21 against 0.20 uses), but spread over more visits: real buyers who
favourite favourite 1.5 items, and 0.14 of real visits favourite against 0.17-0.20 simulated.

So after per-step calibration, visits of every replayed merchant are simulated (one per real
session, with that buyer's persona code, in process: ``EpisodePlayer`` with the agent's
``LLMPolicy``), and each calibrated kind's bias moves by the log ratio of its real rate to its
simulated one. The rate is the funnel's for every kind but ``DEPTH`` (product views): the share of
visits that take it, as the evaluation's ARA compares them; for product views, which nearly every
visit takes, it is uses per visit (how deep a visit browses). The calibrated kinds (``CALIBRATED``)
are those a real event is: views, favourites, cart, checkout, purchase, search. Navigation is left
alone (a simulated buyer routes to a product its own way, a replay by an inserted shortest route),
and ``exit``, once per visit, is the reference.

- Simulated rates are counted in expectation: at every step of a walked visit, the policy's
  probability of the kind, added while the visit has not yet taken it (every step for ``DEPTH``).
  That is unbiased along the walked visits and smooth for rare kinds.
- Real rates come from the replayed sessions' real events, each session cut as the env cuts a visit
  (at its first purchase and after ``max_steps``). A kind no real event shows at all is one the
  source does not log, so its bias stays; when that kind is checkout (Tmall: a replay inserts ``buy
  now`` before each purchase), the purchases' ratio moves checkout's bias instead of ``place
  order``'s, which follows a checkout almost always.
- A kind the replayed sessions take a few times borrows its rate from the whole training log
  (``with_log_prior``: ``LOG_PRIOR_EVENTS`` pseudo-events at the rate of every training merchant's
  sessions, from the prepared events), and its codes share the pooled bias. Measured on Tmall
  IJCAI-15 (split seed 2, benchmarks/RESULTS.md, session 36): 1 of the 2,724 replayed sessions adds
  to the cart (0.0004 per visit) against 0.0016 over the whole training log and 0.0022 at the
  held-out sellers; calibrated to the replayed rate, the persona agent added to the cart in none of
  its visits to three of the four ARA strata, three cells of sixteen at 0. With the prior those
  cells read 0.41-0.78 and its same-window ARA went from 0.701 to 0.793 (the Markov chain's 0.795),
  CRA 0.753 to 0.751. On split 0 (4 replayed carts) ARA moved by -0.014 same window, +0.091 strict.
- Every replayed merchant, not only the validation ones: a few stores' rates are not a new store's.
  Session 10 fitted Tmall's 4 validation sellers, who favourite more and buy less than the held-out
  ones, and held-out conversion fell from 13.0% to 8.8% (real 11.2%).
- Walked under ids the agent never saw (``unseen_ids``, engine/unseen_stores.py): the replayed
  stores' shop and product ids are the ones it trained on, and it acts otherwise on them than on a
  held-out store, whose ids it has never read.
- A few rounds, each step clipped to ``MAX_STEP``. The biases stay kind-wide, so within a kind (which
  product to open) the model still chooses. The early rounds, whose steps are large, play a seeded
  part of the visits (``round_sizes``: a quarter, a half, then all of them twice for four rounds).
  Measured on the demo's persona agent (1,600 visits, benchmarks/RESULTS.md, session 27): on 1,600
  fresh visits its per-code error was 0.230 against 0.219 with every visit in every round, at 69% of
  the visits (79% of the time).
- Per persona code too (``per_code``): each code's kinds get a bias of their own on top
  (``code_bias``), moved by the log ratio of that code's real rate to its simulated one beyond the
  pooled step. The per-type Markov chain matches each type's rates by construction; the tiny agent
  did not: on the demo's held-out merchants its per-code shares of visits taking each kind aligned
  with the real ones at 0.60-0.65 against the chain's 0.65-0.70, and at 0.68-0.77 with these biases
  (four seeds; benchmarks/RESULTS.md, session 26).
  Both sides' rates are pulled toward the pooled ones by ``CODE_PRIOR`` pseudo-visits, so a code with
  few sessions or walked visits moves little.

Off by default (``AgentTrainConfig.calibration_visits``). Measured on three study agents (600
visits, 4 rounds; benchmarks/RESULTS.md, session 13): Tmall's held-out favourite shares per stratum
0.18-0.23 -> 0.13-0.17 (real 0.11-0.15); one brand-log agent unchanged (ARA 0.748 -> 0.744); another
ARA 0.700 -> 0.649, its held-out favourites too high: on stores it never saw that agent favourites
more than on the replayed ones, and the replayed stores cannot show it.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from engine.episode_player import EnvSpec, EpisodePlayer
from engine.population import SimBuyer, buyer_seed
from engine.unseen_stores import write_unseen_stores
from learners.agent.actions import action_kind
from learners.agent.examples import code_key
from learners.agent.policy import ActRequest, ActResult, stable_hash
from learners.agent.scoring import CALIBRATION_FILE
from learners.data.schema import TABLE_FILES

MAX_STEP = 1.5
"""Largest change of a bias in one round (log scale)."""
REFERENCE = "exit"
CALIBRATED = ("product_view", "favorite", "add_to_cart", "remove_from_cart", "checkout", "purchase", "search")
"""Kinds whose biases the rounds move: the ones a real event is. Navigation is not (a simulated buyer
routes to a product its own way, a replay by the inserted shortest route) and ``exit`` is the reference."""
CODE_PRIOR = 30.0
"""Pseudo-visits at the pooled rate added to each code's real and simulated rates (``shrunk``)."""
LOG_PRIOR_EVENTS = 10.0
"""Pseudo-events at the whole training log's rate added to a kind's replayed count (``with_log_prior``);
a kind with fewer replayed events gets no per-code bias (its codes cannot be told apart)."""
DEPTH = ("product_view",)
"""Kinds calibrated on uses per visit (how deep a visit browses); every other calibrated kind on the
share of visits that take it, the funnel's rate, as the evaluation's ARA compares them."""


@dataclass
class RolloutCalibration:
    """What the rounds did: per kind, real and simulated rates (``visit_rates``), and the biases."""

    visits: int
    """Simulated visits of the last rounds (one per real session, up to the cap); ``round_sizes``."""
    merchants: int
    real: dict[str, float]
    """Real rate of each kind over the replayed sessions, with the whole log's prior (``with_log_prior``)."""
    start: dict[str, float]
    """The per-step biases the rounds started from."""
    rounds: list[dict] = field(default_factory=list)
    """Per round: its ``visits``, the ``simulated`` rates with the biases it played, and the ``bias``
    after it."""
    code_bias: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per persona code (its decimal string), its own biases on top of ``bias``."""
    code_error: list[float] = field(default_factory=list)
    """Per round, the mean over codes and kinds of abs(log(real / simulated rate)), both shrunk."""
    unseen_ids: bool = False
    """Whether the visits were walked on the merchants under ids the agent never saw
    (engine/unseen_stores.py)."""
    replayed: dict[str, float] = field(default_factory=dict)
    """Real rate of each kind over the replayed sessions alone."""
    log: dict[str, float] = field(default_factory=dict)
    """Real rate of each kind over every session of the training log; empty without its events."""

    @property
    def bias(self) -> dict[str, float]:
        return self.rounds[-1]["bias"] if self.rounds else dict(self.start)

    def line(self) -> str:
        """One console line: the kinds whose rates moved most, first round against last."""
        if not self.rounds:
            return f"not rollout-calibrated: 0 rounds on {self.visits:,} visits"
        first, last = self.rounds[0]["simulated"], self.rounds[-1]["simulated"]
        shown = [k for k in self.real if self.real[k] > 0]  # the kinds the source logs
        moved = sorted(shown, key=lambda k: -abs(last.get(k, 0.0) - first.get(k, 0.0)))
        parts = ", ".join(
            f"{k} {first.get(k, 0.0):.3f} -> {last.get(k, 0.0):.3f} (real {self.real[k]:.3f})"
            for k in moved[:3]
        )
        per_code = (
            f"; per code, mean abs log(real / simulated) {self.code_error[0]:.2f} -> {self.code_error[-1]:.2f}"
            if self.code_error
            else ""
        )
        sizes = "/".join(f"{r.get('visits', self.visits):,}" for r in self.rounds)
        unseen = " under unseen ids" if self.unseen_ids else ""
        return (
            f"rollout-calibrated on simulated visits of {self.merchants} merchants{unseen}, {len(self.rounds)}"
            f" rounds of {sizes}, per visit: {parts}{per_code}"
        )

    def save(self, agent_dir: str | Path) -> None:
        """Write the refined biases into the agent's calibration.json (the per-step fit is kept)."""
        path = Path(agent_dir) / CALIBRATION_FILE
        record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"bias": {}}
        record["step_bias"] = record.get("step_bias", record["bias"])
        record["bias"] = self.bias
        record["code_bias"] = self.code_bias
        record["rollouts"] = asdict(self)
        path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def counts_toward_rate(kind: str, taken: set[str]) -> bool:
    """Whether a use of ``kind``, in a visit that has taken the kinds ``taken``, counts toward the
    kind's rate: every use of a ``DEPTH`` kind, the first of any other (the share of visits)."""
    return kind in DEPTH or kind not in taken


def visit_rates(traces: pa.Table, max_steps: int) -> tuple[dict[str, float], int]:
    """Per calibrated kind (``CALIBRATED``), in replayed ``traces``: uses per session for a ``DEPTH``
    kind, else the share of sessions that take it; real events only (a replay's inserted navigation
    is not behaviour), each session cut after its first purchase and after ``max_steps`` steps of any
    kind (as the env ends a visit); and the session count."""
    return code_visit_rates(traces, max_steps, {}).get(None, (dict.fromkeys(CALIBRATED, 0.0), 0))


def code_visit_rates(
    traces: pa.Table, max_steps: int, code_of: Mapping[tuple[str, str, str], int]
) -> dict[int | None, tuple[dict[str, float], int]]:
    """``visit_rates`` per persona code of each session (``code_of``: (merchant, buyer, session) to
    code, ``visit_codes``; None for a session it lacks)."""
    keys = zip(
        *(traces.column(c).to_pylist() for c in ("merchant_id", "buyer_id", "session_id")), strict=True
    )
    real = (
        traces.column("real_event").to_pylist()
        if "real_event" in traces.column_names
        else [True] * traces.num_rows
    )
    counts: dict[int | None, Counter[str]] = {}
    sessions: Counter[int | None] = Counter()
    current, steps, done, taken, tally = None, 0, False, set(), Counter()
    for key, action, is_real in zip(keys, traces.column("action").to_pylist(), real, strict=True):
        if key != current:
            code = code_of.get(key)
            current, steps, done, taken = key, 0, False, set()
            tally = counts.setdefault(code, Counter())
            sessions[code] += 1
        if done or steps >= max_steps:
            continue
        kind = action_kind(action)
        steps += 1
        if is_real and kind in CALIBRATED and counts_toward_rate(kind, taken):
            tally[kind] += 1
            taken.add(kind)
        done = kind == "purchase"
    return {c: ({k: n[k] / max(sessions[c], 1) for k in CALIBRATED}, sessions[c]) for c, n in counts.items()}


def log_rates(prepared: str | Path, max_steps: int) -> dict[str, float]:
    """``visit_rates`` over every session of the prepared directory's events (every training
    merchant's, not only the replayed ones), each cut after its first purchase and after ``max_steps``
    events (a little later than the env, whose steps include navigation); empty without events."""
    path = Path(prepared) / TABLE_FILES["events"]
    if not path.exists():
        return {}
    keys = ["merchant_id", "buyer_id", "session_id"]
    events = pl.read_parquet(path, columns=[*keys, "ts", "seq", "event_type"]).sort([*keys, "ts", "seq"])
    bought = (pl.col("event_type") == "purchase").cast(pl.Int32)
    kept = events.with_columns(
        pl.int_range(pl.len()).over(keys).alias("step"),
        (bought.cum_sum() - bought).over(keys).alias("bought_before"),
    ).filter((pl.col("step") < max_steps) & (pl.col("bought_before") == 0))
    sessions = events.select(pl.struct(keys).n_unique()).item()
    if not sessions:
        return {}
    uses = dict(kept.group_by("event_type").len().iter_rows())
    taking = dict(kept.unique([*keys, "event_type"]).group_by("event_type").len().iter_rows())
    return {k: (uses if k in DEPTH else taking).get(k, 0) / sessions for k in CALIBRATED}


def with_log_prior(rates: Mapping[str, float], sessions: int, log: Mapping[str, float]) -> dict[str, float]:
    """Each kind's replayed rate over ``sessions`` with ``LOG_PRIOR_EVENTS`` pseudo-events at its
    ``log`` rate: a kind the replayed sessions take often keeps its own rate, one they take a few times
    takes the log's. A kind the log never shows keeps its replayed rate (the source does not log it)."""
    return {
        k: (v * sessions + LOG_PRIOR_EVENTS) / (sessions + LOG_PRIOR_EVENTS / log[k])
        if log.get(k, 0) > 0
        else v
        for k, v in rates.items()
    }


def shrunk(rates: Mapping[str, float], visits: float, pooled: Mapping[str, float]) -> dict[str, float]:
    """A code's rates over ``visits`` with ``CODE_PRIOR`` pseudo-visits at the ``pooled`` rates."""
    return {
        k: (visits * rates.get(k, 0.0) + CODE_PRIOR * v) / (visits + CODE_PRIOR) for k, v in pooled.items()
    }


class KindTally:
    """An ``act`` callable around a policy that adds up, at every step it answers, the probability
    the policy gave each action kind (softmax of the answer's scores at ``temperature``): for a
    ``DEPTH`` kind at every step (expected uses), for any other only while the visit's history holds
    none of that kind (expected first uses: the share of visits that take it, in expectation); in
    all (``total``) and per buyer's persona code (``by_code``)."""

    def __init__(self, policy, temperature: float) -> None:
        self.policy = policy
        self.temperature = temperature
        self.total: Counter[str] = Counter()
        self.by_code: dict[int | None, Counter[str]] = {}

    def __call__(self, requests: list[ActRequest]) -> list[ActResult]:
        results = self.policy.act(requests)
        for request, result in zip(requests, results, strict=True):
            z = np.asarray(result.info["scores"], dtype=np.float64) / self.temperature
            p = np.exp(z - z.max())
            p /= p.sum()
            taken = {action_kind(a) for a in request.history}
            own = self.by_code.setdefault(request.persona, Counter())
            for action, value in zip(request.valid_actions, p, strict=True):
                kind = action_kind(action)
                if counts_toward_rate(kind, taken):
                    self.total[kind] += float(value)
                    own[kind] += float(value)
        return results


def round_sizes(visits: int, rounds: int) -> list[int]:
    """Visits each of ``rounds`` rounds plays: all ``visits`` in the last two, half the next round's
    before them (at least one)."""
    return [max(1, visits >> max(0, rounds - 2 - r)) for r in range(rounds)]


def session_buyers(
    traces: pa.Table, code_of: Mapping[tuple[str, str, str], int] | None, visits: int, seed: int
) -> list[SimBuyer]:
    """One simulated buyer per real session of ``traces`` (a seeded sample of ``visits`` when there
    are more), with that session's persona code (``code_of``, from ``visit_codes``; 0 for every
    session without codes, and with codes only the sessions that have one)."""
    sessions = (
        traces.select(["merchant_id", "buyer_id", "session_id"])
        .group_by(["merchant_id", "buyer_id", "session_id"])
        .aggregate([])
        .sort_by([("merchant_id", "ascending"), ("buyer_id", "ascending"), ("session_id", "ascending")])
        .to_pylist()
    )
    if len(sessions) > visits:
        keep = np.sort(np.random.default_rng(seed).choice(len(sessions), visits, replace=False))
        sessions = [sessions[i] for i in keep]
    run_seed = stable_hash(f"rollout-calibration\t{seed}")
    known = code_of or {}
    keys = [(s["merchant_id"], s["buyer_id"], s["session_id"]) for s in sessions]
    return [
        SimBuyer(i, key[0], known.get(key, 0), buyer_seed(run_seed, i))
        for i, key in enumerate(keys)
        if code_of is None or key in known
    ]


def visit_codes(traces: pa.Table, codes: pa.Table | None) -> dict[tuple[str, str, str], int]:
    """Each replayed (merchant, buyer, session)'s persona code in ``codes``: its buyer's, or its own
    where the codes are per visit (``examples.code_key``); empty without codes."""
    if codes is None:
        return {}
    key = code_key(codes)
    visits = (
        traces.select(["merchant_id", "buyer_id", "session_id"])
        .group_by(["merchant_id", "buyer_id", "session_id"])
        .aggregate([])
    )
    joined = visits.join(codes.select([*key, "code"]), key, join_type="inner")
    rows = joined.to_pylist()
    return {(r["merchant_id"], r["buyer_id"], r["session_id"]): int(r["code"]) for r in rows}


def bias_step(target: dict[str, float], simulated: dict[str, float]) -> dict[str, float]:
    """One round's change of each calibrated kind's bias: log(real / simulated rate),
    clipped to ``MAX_STEP``, for the kinds both sides show."""
    step = {
        k: float(np.clip(np.log(target[k] / simulated[k]), -MAX_STEP, MAX_STEP))
        for k in CALIBRATED
        if target.get(k, 0.0) > 0 and simulated.get(k, 0.0) > 0
    }
    if target.get("checkout", 0.0) == 0 and "purchase" in step:
        # The source logs no checkout (Tmall: a replay inserts `buy now` before each purchase),
        # and `place order` follows a checkout almost always: purchases are steered at checkout.
        step["checkout"] = step.pop("purchase")
    return step


def calibrate_rollouts(
    policy,
    prepared: str | Path,
    traces: pa.Table,
    codes: pa.Table | None,
    visits: int = 600,
    rounds: int = 4,
    max_steps: int = 30,
    seed: int = 0,
    per_code: bool = True,
    unseen_ids: bool = True,
) -> RolloutCalibration:
    """Refine ``policy.kind_bias`` (an ``LLMPolicy``, with its per-step calibration when it has one)
    on simulated visits of the merchants in ``traces`` (the replayed sessions) in ``prepared``, each
    cut at ``max_steps`` (the studies' and the example experiment's cap), sampled at the policy's
    temperature, and with ``per_code`` and ``codes`` its ``code_bias`` too; with ``unseen_ids``, on a
    copy of those merchants under ids the agent never saw (engine/unseen_stores.py). The policy keeps
    the result."""
    replayed, sessions = visit_rates(traces, max_steps)
    log = log_rates(prepared, max_steps)
    target = with_log_prior(replayed, sessions, log)
    rare = {k for k, v in replayed.items() if v * sessions < LOG_PRIOR_EVENTS}
    code_of = visit_codes(traces, codes) if codes is not None else None
    buyers = session_buyers(traces, code_of, visits, seed)
    if not buyers:
        raise ValueError("rollout calibration needs replayed sessions (with persona codes); there are none")
    merchants = sorted({b.merchant_id for b in buyers})
    with tempfile.TemporaryDirectory(prefix="unseen-stores-") if unseen_ids else nullcontext() as work:
        if unseen_ids:
            renamed = write_unseen_stores(prepared, merchants, work, seed)
            buyers = [replace(b, merchant_id=renamed[b.merchant_id]) for b in buyers]
        player = EpisodePlayer(
            EnvSpec(kwargs={"data": work or str(prepared)}),
            max_envs=256,
            max_steps=max_steps,
            use_persona=codes is not None,
        )
        record = RolloutCalibration(
            len(buyers),
            len(merchants),
            target,
            dict(policy.kind_bias),
            unseen_ids=unseen_ids,
            replayed=replayed,
            log=log,
        )
        temperature = max(policy.temperature, 1e-3)  # argmax: the tally of a very sharp softmax
        coded = per_code and codes is not None
        real = code_visit_rates(traces, max_steps, code_of or {}) if coded else {}
        bias, own = dict(policy.kind_bias), {c: {} for c in sorted({b.code for b in buyers}) if c in real}
        order = np.random.default_rng(seed).permutation(len(buyers))
        for size in round_sizes(len(buyers), rounds):
            played = [buyers[i] for i in np.sort(order[:size])]
            policy.kind_bias, policy.code_bias = bias, own
            tally = KindTally(policy, temperature)
            player.play(played, tally)
            simulated = {k: v / len(played) for k, v in tally.total.items()}
            step = bias_step(target, simulated)
            bias = {k: round(bias.get(k, 0.0) + step.get(k, 0.0), 6) for k in set(bias) | set(step)}
            record.rounds.append({"visits": size, "simulated": simulated, "bias": dict(sorted(bias.items()))})
            walked = Counter(b.code for b in played)
            errors = []
            for code, offsets in own.items():
                if not walked[code]:
                    continue  # none of its visits in this round: nothing of its own to go by
                real_rates = shrunk(real[code][0], real[code][1], target)
                code_rates = {k: v / walked[code] for k, v in tally.by_code.get(code, {}).items()}
                sim_rates = shrunk(code_rates, walked[code], simulated)
                real_rates = {k: v for k, v in real_rates.items() if k not in rare}
                errors += [
                    abs(np.log(real_rates[k] / sim_rates[k]))
                    for k in real_rates
                    if real_rates[k] > 0 and sim_rates.get(k, 0.0) > 0
                ]
                # The pooled step moves every code; a code's own bias takes what is left of its step.
                for k, v in bias_step(real_rates, sim_rates).items():
                    offsets[k] = round(offsets.get(k, 0.0) + v - step.get(k, 0.0), 6)
            if own:
                record.code_error.append(float(np.mean(errors)) if errors else 0.0)
        policy.kind_bias, policy.code_bias = bias, own
        record.code_bias = {str(c): dict(sorted(v.items())) for c, v in sorted(own.items())}
    return record


def prepared_of(data: str | Path) -> Path:
    """The prepared directory behind a train-agent input: itself, or the one its traces were replayed
    from (the traces manifest's ``inputs.prepared``)."""
    path = Path(data)
    if (path / "catalogs.parquet").exists():
        return path
    manifest = (path if path.is_dir() else path.parent) / "manifest.json"
    if manifest.exists():
        prepared = json.loads(manifest.read_text(encoding="utf-8")).get("inputs", {}).get("prepared")
        if prepared and (Path(prepared) / "catalogs.parquet").exists():
            return Path(prepared)
    raise FileNotFoundError(
        f"{data}: rollout calibration needs the prepared directory its traces came from (catalogs.parquet);"
        " pass the prepared directory, or turn it off with --calibration-visits 0"
    )
