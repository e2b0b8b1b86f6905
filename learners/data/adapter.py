"""The adapter protocol: a source format in, canonical event chunks (and quarantined rows) out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa


@dataclass
class CanonicalChunk:
    """One slice of input after canonicalization.

    Invariant: rows_read == events + quarantined rows + rows dropped on purpose (``dropped``).
    """

    events: pa.Table
    """Rows in the CANONICAL_EVENTS schema."""
    quarantine: pa.Table
    """Rows in the QUARANTINE schema: every row of this slice that could not be used, with why."""
    rows_read: int
    """Data rows read from the input for this slice (header lines excluded)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Source event code -> rows of this slice left out because the mapping drops that code."""


class Adapter(Protocol):
    """A source format. Dedicated adapters and the YAML-mapping adapter both implement this."""

    name: str
    day_resolution: bool
    """True when timestamps carry only a date; sessions.py then applies the documented within-day order."""

    def read(self, inputs: Sequence[Path]) -> Iterator[CanonicalChunk]:
        """Stream canonical chunks from files (already expanded from directories), in input order."""
        ...
