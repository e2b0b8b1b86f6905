"""A run's output directory: one Parquet part per chunk of buyers, the manifest, and resuming from them.

Each part is written atomically (temp file, then rename) and named after its chunk, so a chunk is in
the output exactly once or not at all, and a resumed run reads which chunks are done from the parts
themselves. The manifest (rewritten atomically after every part) holds the running totals, the
per-merchant summary and the config; a run resumes only with the config fields that decide what
is simulated unchanged.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.population import SimBuyer
from engine.simulation_config import SimulationConfig
from learners.config import config_to_dict

ROLLOUTS_DIR = "rollouts"
MANIFEST = "manifest.json"
# Fields that decide what is simulated; a resumed run must agree with the manifest on all of them.
RESULT_FIELDS = (
    "data",
    "distributions",
    "merchants",
    "buyers_per_merchant",
    "buyers_per_real_session",
    "seed",
    "stratified",
    "smoothing",
    "codebook_size",
    "env_id",
    "env_kwargs",
    "max_steps",
    "use_persona",
    "policy",
    "policy_path",
    "temperature",
    "chunk_size",
    "replicates",
    "goal_tasks",
    "goal_draw",
)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RunTally:
    """Running totals and per-merchant counts, fed chunk by chunk (also from parts on resume)."""

    def __init__(self) -> None:
        self.buyers = 0
        self.steps = 0
        self.invalid = 0
        self.tokens = 0
        self.merchants: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, table: pa.Table) -> None:
        self.steps += table.num_rows
        self.invalid += table.num_rows - int(pc.sum(table["valid"]).as_py() or 0)
        self.tokens += int(pc.sum(table["tokens"]).as_py() or 0)
        per_buyer = table.group_by(["merchant_id", "sim_buyer_id"]).aggregate(
            [("converted", "max"), ("valid", "count"), ("valid", "sum")]
        )
        self.buyers += per_buyer.num_rows
        for m, conv, n, ok in zip(
            *(per_buyer[c].to_pylist() for c in ("merchant_id", "converted_max", "valid_count", "valid_sum")),
            strict=True,
        ):
            counts = self.merchants[m]
            counts["buyers"] += 1
            counts["converted"] += int(conv)
            counts["steps"] += n
            counts["invalid_steps"] += n - ok
        kinds = table.group_by(["merchant_id", "action_kind", "sim_buyer_id"]).aggregate([])
        for m, kind in zip(kinds["merchant_id"].to_pylist(), kinds["action_kind"].to_pylist(), strict=True):
            self.merchants[m][f"kind:{kind}"] += 1

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per merchant: buyers, conversion rate, invalid-action rate, share of buyers taking each kind."""
        out = {}
        for m in sorted(self.merchants):
            c = self.merchants[m]
            out[m] = {
                "buyers": c["buyers"],
                "steps": c["steps"],
                "invalid_steps": c["invalid_steps"],
                "conversion_rate": c["converted"] / c["buyers"],
                "invalid_rate": c["invalid_steps"] / max(c["steps"], 1),
                "action_rates": {
                    k[5:]: v / c["buyers"] for k, v in sorted(c.items()) if k.startswith("kind:")
                },
            }
        return out


def format_summary(summary: dict[str, dict[str, Any]], max_kinds: int = 8) -> str:
    """A fixed-width table: one row per merchant, funnel columns = share of buyers taking each action kind."""
    totals: collections.Counter = collections.Counter()
    for s in summary.values():
        for k, rate in s["action_rates"].items():
            totals[k] += rate * s["buyers"]
    kinds = [k for k, _ in totals.most_common(max_kinds)]
    head = ["merchant", "buyers", "conv", "invalid", *kinds]
    lines = [" ".join(f"{h:>12}" for h in head)]
    for m, s in summary.items():
        cells = [
            m[:12],
            str(s["buyers"]),
            f"{s['conversion_rate']:.3f}",
            f"{s['invalid_rate']:.3f}",
            *(f"{s['action_rates'].get(k, 0.0):.3f}" for k in kinds),
        ]
        lines.append(" ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


class RolloutStore:
    """The output of one run of ``config``, played in ``chunks``: which chunks are written, their tally."""

    def __init__(self, config: SimulationConfig, chunks: list[list[SimBuyer]]) -> None:
        self.config = config
        self.chunks = chunks
        self.out = Path(config.out)
        self.tally = RunTally()
        self.done: set[int] = set()
        self.elapsed_before = 0.0
        """Run time of the runs this one resumes (their manifest's ``elapsed_s``)."""

    def open(self) -> None:
        """Start a new output, or with ``resume`` take over the written parts of the same run."""
        parts = self.out / ROLLOUTS_DIR
        manifest = self.out / MANIFEST
        existing = sorted(parts.glob("part-*.parquet")) if parts.exists() else []
        if not self.config.resume:
            if existing or manifest.exists():
                raise ValueError(
                    f"{self.out}: already holds a simulation (manifest or parts); pass --resume"
                    " true to continue it, or choose a new --out"
                )
            parts.mkdir(parents=True, exist_ok=True)
            return
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest}: nothing to resume; run without --resume first")
        previous = json.loads(manifest.read_text(encoding="utf-8"))
        mine = config_to_dict(self.config)
        # A field missing from an older manifest had its default then.
        defaults = config_to_dict(SimulationConfig())
        changed = [k for k in RESULT_FIELDS if previous["config"].get(k, defaults[k]) != mine[k]]
        if changed:
            raise ValueError(
                f"{manifest}: cannot resume with a different {changed}; the manifest has"
                f" {[previous['config'].get(k) for k in changed]}"
            )
        self.elapsed_before = float(previous.get("elapsed_s", 0.0))
        parts.mkdir(parents=True, exist_ok=True)
        for path in existing:
            chunk_id = int(path.stem.split("-")[1])
            if chunk_id >= len(self.chunks):
                raise ValueError(f"{path}: chunk {chunk_id} is outside this run's {len(self.chunks)} chunks")
            self.tally.add(pq.read_table(path))
            self.done.add(chunk_id)

    def write(self, chunk_id: int, table: pa.Table) -> None:
        """Write a played chunk as its part, after checking that it holds exactly the chunk's buyers."""
        expected = sorted(b.sim_buyer_id for b in self.chunks[chunk_id])
        got = sorted(set(table["sim_buyer_id"].to_pylist()))
        if got != expected:
            raise RuntimeError(
                f"chunk {chunk_id}: rollouts cover buyers {got[:5]}..., expected {expected[:5]}..."
            )
        path = self.out / ROLLOUTS_DIR / f"part-{chunk_id:06d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self.done.add(chunk_id)
        self.tally.add(table)

    def write_manifest(self, elapsed: float, complete: bool, run: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest: the totals so far, ``run``'s own figures (restarts, placement, start-up),
        the per-merchant summary and the config; returns it."""
        t = self.tally
        manifest = {
            "complete": complete,
            "buyers_requested": sum(map(len, self.chunks)),
            "buyers_completed": t.buyers,
            "steps": t.steps,
            "invalid_steps": t.invalid,
            "tokens": t.tokens,
            "seed": self.config.seed,
            "chunks": len(self.chunks),
            "chunks_done": sorted(self.done),
            **run,
            "elapsed_s": elapsed,
            "merchants": t.summary(),
            "config": config_to_dict(self.config),
        }
        write_json_atomic(self.out / MANIFEST, manifest)
        return manifest
