"""A Unicode string space for page text and free-text actions.

Gymnasium's ``spaces.Text`` rejects any character outside its charset, and ``AsyncVectorEnv`` with
shared memory silently replaces Text observations by ``charset[0] * max_length``. This space accepts
any ``str`` up to ``max_length`` characters and, being a plain ``Space`` subclass, has no
shared-memory layout: vector envs batch it as a tuple of strings, and ``AsyncVectorEnv`` must be
built with ``shared_memory=False`` (with shared memory it raises instead of corrupting text).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.spaces import Space

SAMPLE_CHARSET = "abcdefghijklmnopqrstuvwxyz0123456789 \"'-éü中"
"""Characters ``sample`` draws from (ASCII plus a few non-ASCII ones, to exercise Unicode handling)."""


class UnicodeText(Space[str]):
    """Any string of ``min_length``..``max_length`` characters."""

    def __init__(self, max_length: int, min_length: int = 0, seed: int | np.random.Generator | None = None):
        if not 0 <= min_length <= max_length:
            raise ValueError(
                f"UnicodeText needs 0 <= min_length <= max_length, got {min_length}, {max_length}"
            )
        self.max_length = max_length
        self.min_length = min_length
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """A random string (length capped at 64 so samples stay cheap); masks are not supported."""
        if mask is not None or probability is not None:
            raise ValueError("UnicodeText.sample takes no mask or probability")
        high = min(self.max_length, max(self.min_length, 64))
        n = int(self.np_random.integers(self.min_length, high + 1))
        idx = self.np_random.integers(0, len(SAMPLE_CHARSET), size=n)
        return "".join(SAMPLE_CHARSET[i] for i in idx)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def to_jsonable(self, sample_n: Any) -> list[str]:
        return list(sample_n)

    def from_jsonable(self, sample_n: list[str]) -> list[str]:
        return list(sample_n)

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, UnicodeText)
            and other.max_length == self.max_length
            and other.min_length == self.min_length
        )
