"""How precise fidelity figures can be, and what the bootstrap costs, on a prepared real log.

  .venv/bin/python -m benchmarks.fidelity_bounds --data /tmp/brand
  (prepared first: simpersona prepare ../shared/data/tmall-brand-2014 --format tmall-brand --out /tmp/brand)

Sections, each printed as a Markdown table:
- precision: merchants with >= ``--min-sessions`` real sessions stand for the truth (each merchant's
  sessions are its behaviour). A perfect simulator with V visits is compared with N real sessions,
  both drawn from that truth, ``--draws`` times: the mean CRA, ARA and cr_corr with their 5–95% range,
  for N real sessions per merchant (rows) and V visits (columns). It answers how many real sessions
  and simulated visits a user needs before a given CRA can be read as a simulator's fault.
- effects: what the studies' "persona beats another merchant's codes" targets can show:
  ``engine/bootstrap.py``'s effect ceiling with ``--visits`` visits per merchant and ``--draws``
  replicates. A perfect simulator and one given another merchant's buyers (a fixed derangement) are
  compared with the same resample of each merchant's real sessions; the table gives their difference
  in CRA, ARA and cr_corr (mean and 95% range) and the share of draws in which it exceeds 1.96 of its
  standard deviations: about how often a study's paired interval would clear 0 for a perfect simulator.
- speed: the bootstrap of ``engine/bootstrap.py`` (ceiling, floor, intervals, paired effects) for
  ``--systems`` systems against today's point metrics (``engine.evaluate.fidelity``) on the same
  units, and against a baseline that loops over replicates in Python.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from engine.batch_metrics import Sums, fidelity_batch
from engine.bootstrap import resample_sums, uncertainty
from engine.evaluate import MerchantStats, Units, fidelity, real_units

SESSIONS = (25, 50, 100, 200, 400)
VISITS = (50, 200, 1000, 5000, None)


def merchants_with(data: str, min_sessions: int, limit: int, seed: int) -> list[str]:
    table = pl.read_parquet(f"{data}/merchants.parquet", columns=["merchant_id", "sessions"])
    eligible = sorted(table.filter(pl.col("sessions") >= min_sessions)["merchant_id"].to_list())
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(eligible, size=min(limit, len(eligible)), replace=False).tolist())


def precision(units: Units, draws: int, seed: int) -> list[str]:
    """Rows of the precision table: perfect-simulator CRA / ARA / cr_corr for each (N, V)."""
    rng = np.random.default_rng(seed)
    merchants = sorted(units.rows)
    actions = len(units.actions)
    lines = [
        "| real sessions per merchant | " + " | ".join(f"{v or 'unlimited'} visits" for v in VISITS) + " |",
        "|---:" + "|---" * len(VISITS) + "|",
    ]
    for n in SESSIONS:
        real = np.stack([resample_sums(units.rows[m], n, draws, rng) for m in merchants], axis=1)
        cells = []
        for v in VISITS:
            if v is None:
                sim = np.broadcast_to(np.stack([units.rows[m].sum(0) for m in merchants]), real.shape)
            else:
                sim = np.stack([resample_sums(units.rows[m], v, draws, rng) for m in merchants], axis=1)
            got = fidelity_batch(Sums.from_rows(sim, actions), Sums.from_rows(real, actions))
            cra = got["cra"]
            lo, hi = np.percentile(cra, [5, 95])
            cells.append(
                f"CRA {cra.mean():.3f} ({lo:.2f}–{hi:.2f}), ARA {np.nanmean(got['ara']):.3f}, "
                f"r {np.nanmean(got['cr_corr']):.2f}"
            )
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def effects(units: Units, draws: int, visits: int, seed: int) -> list[str]:
    """Rows of the effects table: ``uncertainty``'s effect ceiling with ``visits`` visits per merchant."""
    summary = uncertainty(
        units,
        {
            "perfect": Units(
                units.actions, {m: np.resize(r, (visits, r.shape[1])) for m, r in units.rows.items()}
            )
        },
        "perfect",
        replicates=draws,
        seed=seed,
    )
    lines = [
        f"| metric ({len(units.rows)} merchants, {visits} visits, {draws} draws) | perfect − perfect given "
        "another merchant's buyers: mean [95%] | share of draws that clear 0 |",
        "|---|---:|---:|",
    ]
    for metric in ("cra", "ara", "cr_corr"):
        c = summary["effect_ceiling"][metric]
        lines.append(
            f"| {metric} | {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] | {c['power']:.2f} |"
        )
    return lines


def as_stats(rows: np.ndarray, actions: list[str]) -> MerchantStats:
    a = len(actions)
    hist = rows[:, 2 + 2 * a :].sum(0).astype(int)
    return MerchantStats(
        len(rows),
        int(rows[:, 1].sum()),
        {k: int(v) for k, v in zip(actions, rows[:, 2 : 2 + a].sum(0), strict=True) if v},
        {k: int(v) for k, v in zip(actions, rows[:, 2 + a : 2 + 2 * a].sum(0), strict=True) if v},
        [b + 1 for b, c in enumerate(hist) for _ in range(c)],
    )


def looped_intervals(real: Units, sim: Units, replicates: int, seed: int) -> None:
    """The baseline: one replicate at a time, resampling units by index and scoring with ``fidelity``."""
    rng = np.random.default_rng(seed)
    merchants = sorted(real.rows)
    for _ in range(replicates):
        picked = rng.integers(0, len(merchants), len(merchants))
        r, s = {}, {}
        for i, j in enumerate(picked):
            m = merchants[j]
            rr, ss = real.rows[m], sim.rows[m]
            r[f"{i}"] = as_stats(rr[rng.integers(0, len(rr), len(rr))], real.actions)
            s[f"{i}"] = as_stats(ss[rng.integers(0, len(ss), len(ss))], sim.actions)
        fidelity(s, r)


def speed(units: Units, systems: int, replicates: int, visits: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    sims = {
        f"system-{i}": Units(
            units.actions,
            {m: r[rng.integers(0, len(r), visits)] for m, r in units.rows.items()},
        )
        for i in range(systems)
    }
    real_stats = {m: as_stats(r, units.actions) for m, r in units.rows.items()}
    start = time.perf_counter()
    for sim in sims.values():
        fidelity({m: as_stats(r, units.actions) for m, r in sim.rows.items()}, real_stats)
    point_s = time.perf_counter() - start
    start = time.perf_counter()
    uncertainty(units, sims, "system-0", list(sims)[1:], replicates=replicates, seed=seed)
    boot_s = time.perf_counter() - start
    loop_reps = 20
    start = time.perf_counter()
    looped_intervals(units, sims["system-0"], loop_reps, seed)
    loop_s = (time.perf_counter() - start) / loop_reps * replicates * systems
    return [
        f"| what ({systems} systems, {len(units.rows)} merchants, {visits} visits each, "
        f"{replicates} replicates) | seconds | ratio to point metrics |",
        "|---|---:|---:|",
        f"| point metrics only (`fidelity`, today) | {point_s:.2f} | 1.0 |",
        f"| + ceiling, floor, intervals, paired effects (`uncertainty`) | {boot_s:.2f} | {boot_s / point_s:.1f} |",
        f"| baseline: Python loop over replicates (from {loop_reps}, scaled) | {loop_s:.1f} | "
        f"{loop_s / point_s:.0f} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="prepared directory of a real log")
    parser.add_argument("--min-sessions", type=int, default=50)
    parser.add_argument("--merchants", type=int, default=42)
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--visits", type=int, default=200, help="simulated visits per merchant (effects)")
    parser.add_argument("--systems", type=int, default=8)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    merchants = merchants_with(args.data, args.min_sessions, args.merchants, args.seed)
    units = real_units(args.data, merchants)
    sizes = [len(r) for r in units.rows.values()]
    print(
        f"{args.data}: {len(merchants)} merchants with >= {args.min_sessions} sessions (median "
        f"{np.median(sizes):.0f}), seed {args.seed}\n"
    )
    print("\n".join(precision(units, args.draws, args.seed)))
    print()
    print("\n".join(effects(units, args.draws, args.visits, args.seed)))
    print()
    print("\n".join(speed(units, args.systems, args.replicates, 200, args.seed)))


if __name__ == "__main__":
    main()
