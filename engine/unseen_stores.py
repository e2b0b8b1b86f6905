"""Replayed stores under ids the agent never saw, for rollout calibration to walk.

An agent fine-tuned on the replayed merchants' sessions has read their shop names and product ids
thousands of times; a held-out store's ids it has never read. Rollout calibration fits the agent's
biases on visits it walks on the replayed stores (engine/rollout_calibration.py), so it fits them
to how the agent acts on stores it knows. Measured on the demo's seed-0 persona agent after its
calibration (benchmarks/RESULTS.md, session 28): on the same 1,600 replayed visits it bought in
0.185 of them as the stores are and in 0.165 under fresh ids, and searched in 0.43 against 0.33.

So the calibration walks a copy of the replayed merchants' prepared rows in which every merchant id
and product id is replaced by one that appears nowhere in the prepared directory: the stores keep
their catalogues, prices, categories and listings, and look new. Category ids stay: categories
are shared across a log's stores, a held-out store's included.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

RELABELLED = ("merchant_id", "product_id")
"""Columns whose ids are replaced, the same way in every file."""
_TAIL = re.compile(r"^(.*?)(\d*)$")


def fresh_ids(ids: Iterable[str], taken: Iterable[str], seed: int) -> dict[str, str]:
    """Each of ``ids`` mapped to an id none of ``taken`` (or ``ids``) is, in the same form: its trailing
    number replaced by a number above every trailing number of the same prefix, zero-padded to the
    number's width, handed out in a seeded order (so the new order says nothing of the old). An id
    without a trailing number becomes ``unseen-N``."""
    ids = sorted(set(ids))
    top: dict[str, int] = {}
    for i in set(taken) | set(ids):
        prefix, tail = _TAIL.match(i).groups()
        if tail:
            top[prefix] = max(top.get(prefix, 0), int(tail))
    groups: dict[str, list[str]] = {}
    for i in ids:
        prefix, tail = _TAIL.match(i).groups()
        groups.setdefault(prefix if tail else "unseen-", []).append(i)
    rng = np.random.default_rng(seed)
    mapping: dict[str, str] = {}
    for prefix, members in sorted(groups.items()):
        width = max(len(_TAIL.match(m).group(2)) for m in members)
        numbers = top.get(prefix, 0) + 1 + rng.permutation(len(members))
        for member, number in zip(members, numbers, strict=True):
            mapping[member] = f"{prefix}{int(number):0{width}d}"
    return mapping


def write_unseen_stores(
    prepared: str | Path, merchants: Sequence[str], out: str | Path, seed: int
) -> dict[str, str]:
    """Write the rows of ``merchants`` in the prepared directory ``prepared`` to ``out``, their merchant
    and product ids replaced by ``fresh_ids`` (not used anywhere in ``prepared``); every other file is
    copied. Returns each merchant's new id."""
    prepared, out = Path(prepared), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, pa.Table] = {}
    taken: dict[str, set[str]] = {c: set() for c in RELABELLED}
    mine: dict[str, set[str]] = {c: set() for c in RELABELLED}
    for path in sorted(prepared.iterdir()):
        names = pq.read_schema(path).names if path.suffix == ".parquet" else []
        if "merchant_id" not in names:
            if path.is_file():
                shutil.copy(path, out / path.name)
            continue
        columns = [c for c in RELABELLED if c in names]
        every = pq.read_table(path, columns=columns)  # only the ids: a log's events can be large
        table = pq.read_table(path, filters=[("merchant_id", "in", list(merchants))])
        for column in columns:
            taken[column] |= set(pc.unique(every.column(column).drop_null()).to_pylist())
            mine[column] |= set(pc.unique(table.column(column).drop_null()).to_pylist())
        tables[path.name] = table
    maps = {c: fresh_ids(mine[c], taken[c], seed + i) for i, c in enumerate(RELABELLED)}
    for name, table in tables.items():
        for column in RELABELLED:
            if column in table.column_names:
                field = table.schema.field(column)
                values = [None if v is None else maps[column][v] for v in table.column(column).to_pylist()]
                table = table.set_column(
                    table.schema.get_field_index(column), field, pa.array(values, field.type)
                )
        pq.write_table(table, out / name)
    return maps["merchant_id"]
