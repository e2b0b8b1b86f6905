"""Benchmark `simpersona prepare` against a plain pandas implementation, both in subprocesses.

  .venv/bin/python -m benchmarks.pipeline [--events 10000000] [--markdown FILE]

Inputs: the four real samples in ../shared/data (skipped with a message when absent) and synthetic
Parquet logs of --small-events and --events events written by `learners.data.synth`. For each input
and each implementation it measures wall time of the whole subprocess, the time the run reports for
its own work (without interpreter start and imports), events/s on that time, and peak RSS (wait4's
ru_maxrss of the child). Prints one table with the pandas/ours time ratio; --markdown writes it too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from learners.data.synth import SynthConfig, synthesize
from tests.conftest import REAL_FILES

ROOT = Path(__file__).resolve().parents[1]

EVENTS_PER_BUYER = 20.0


@dataclass
class Run:
    wall_s: float
    work_s: float
    events: int
    rows_read: int
    quarantined: int
    buyers: int
    peak_rss_mib: float


def measured(cmd: list[str], log: Path) -> tuple[str, float, float]:
    """Run cmd with stdout/stderr to log files; its stdout, wall seconds and peak RSS (MiB) from wait4."""
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # reap it here: wait4 gives this child's own peak RSS
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.with_suffix('.err').read_text()[-3000:]}"
        )
    return log.with_suffix(".out").read_text(), wall, usage.ru_maxrss / 1024


def run_ours(inputs: list[Path], source: list[str], out: Path) -> Run:
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "prepare",
        *map(str, inputs),
        *source,
        "--out",
        str(out),
        "--no-progress",
    ]
    stdout, wall, rss = measured(cmd, out.parent / f"{out.name}.log")
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    match = re.search(r"rows in ([0-9.]+) s", stdout)
    work = float(match.group(1)) if match else wall
    return Run(wall, work, c["events"], c["rows_read"], c["rows_quarantined"], c["buyers"], rss)


def run_pandas(inputs: list[Path], mapping: Path, out: Path) -> Run:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "pandas_prepare.py"),
        *map(str, inputs),
        "--mapping",
        str(mapping),
        "--out",
        str(out),
    ]
    _, wall, rss = measured(cmd, out.parent / f"{out.name}.log")
    c = json.loads((out / "counts.json").read_text())
    return Run(wall, c["seconds"], c["events"], c["rows_read"], c["rows_quarantined"], c["buyers"], rss)


def synthetic_input(work: Path, events: int) -> tuple[list[Path], Path]:
    out = work / f"synth-{events}"
    config = SynthConfig(
        buyers=max(1, round(events / EVENTS_PER_BUYER)),
        merchants=50,
        seed=0,
        events_per_buyer=EVENTS_PER_BUYER,
        file_format="parquet",
        timestamp_format="unix_ms",
        rows_per_file=2_000_000,
    )
    summary = synthesize(config, out)
    return [out / name for name in summary["files"]], out / "mapping.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000, help="events of the large synthetic log")
    parser.add_argument(
        "--small-events", type=int, default=1_000_000, help="events of the small synthetic log"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/simpersona-bench"), help="scratch directory")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--no-pandas", action="store_true", help="measure only simpersona prepare")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    cases: list[tuple[str, list[Path], list[str], Path]] = []
    for name, path in REAL_FILES.items():
        if not path.exists():
            print(f"skip {name}: {path} not present (../shared/data is missing beside the checkout)")
            continue
        cases.append(
            (f"{name} (csv)", [path], ["--format", name], ROOT / "examples" / "mappings" / f"{name}.yaml")
        )
    for events in (args.small_events, args.events):
        parts, mapping = synthetic_input(args.work, events)
        cases.append((f"synth {events / 1e6:g}M (parquet)", parts, ["--mapping", str(mapping)], mapping))

    header = (
        "input",
        "rows",
        "ours wall s",
        "ours work s",
        "ours events/s",
        "ours peak RSS MiB",
        "pandas wall s",
        "pandas work s",
        "pandas events/s",
        "pandas peak RSS MiB",
        "pandas/ours (work)",
        "pandas/ours (wall)",
    )
    rows: list[tuple[str, ...]] = []
    peaks: dict[str, float] = {}
    for label, inputs, source, mapping in cases:
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower())
        ours = run_ours(inputs, source, args.work / f"ours-{slug}")
        peaks[label] = ours.peak_rss_mib
        cells = [
            label,
            f"{ours.rows_read:,}",
            f"{ours.wall_s:.2f}",
            f"{ours.work_s:.2f}",
            f"{ours.events / ours.work_s:,.0f}",
            f"{ours.peak_rss_mib:,.0f}",
        ]
        if args.no_pandas:
            cells += ["-"] * 6
        else:
            pandas = run_pandas(inputs, mapping, args.work / f"pandas-{slug}")
            if pandas.events != ours.events or pandas.buyers != ours.buyers:
                print(
                    f"note {label}: pandas kept {pandas.events:,} events / {pandas.buyers:,} buyers, "
                    f"ours {ours.events:,} / {ours.buyers:,} (quarantine rules differ in detail)"
                )
            cells += [
                f"{pandas.wall_s:.2f}",
                f"{pandas.work_s:.2f}",
                f"{pandas.events / pandas.work_s:,.0f}",
                f"{pandas.peak_rss_mib:,.0f}",
                f"{pandas.work_s / ours.work_s:.1f}x",
                f"{pandas.wall_s / ours.wall_s:.1f}x",
            ]
        rows.append(tuple(cells))
        print(" | ".join(cells), flush=True)

    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
    small, large = (f"synth {n / 1e6:g}M (parquet)" for n in (args.small_events, args.events))
    note = (
        f"\nPeak RSS of `simpersona prepare`: {peaks[small]:,.0f} MiB at {args.small_events:,} events, "
        f"{peaks[large]:,.0f} MiB at {args.events:,} events ({peaks[large] / peaks[small]:.2f}x for "
        f"{args.events / args.small_events:g}x the events).\n"
        "work s = the time each run reports for its own work (no interpreter start or imports); "
        "events/s = events kept / work s.\n"
    )
    print()
    print(table)
    print(note)
    if args.markdown:
        args.markdown.write_text(table + "\n" + note, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
