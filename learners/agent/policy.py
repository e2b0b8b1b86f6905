"""The one interface every shopping policy implements (LLM agent, Markov chain, random).

The simulation engine batches requests from many envs into one ``act`` call; a policy answers each
request with one of that request's valid actions (or, for free generation, text that the env then
parses strictly against its valid actions).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from learners.agent.actions import action_template

TEMPLATE_KEY = "\x1etemplate "
"""Prefixed to a template's text for its noise, so that it never shares an option's."""


@dataclass(frozen=True)
class ActRequest:
    """What a policy sees for one simulated buyer at one step."""

    observation: str
    """The page as text (envs/render.py), identical in training traces and in simulation."""
    valid_actions: tuple[str, ...]
    """The actions the page can perform; a scoring policy picks exactly one of these."""
    persona: int | None = None
    """The buyer's persona code (codebook index), or None for a no-persona policy."""
    goal: str | None = None
    """Target product id for goal-oriented tasks, else None."""
    history: tuple[str, ...] = ()
    """The buyer's previous actions in this episode, oldest first."""
    seed: int = 0
    """Per-request seed (derived from run seed, buyer and step) so sampling is order-independent."""


@dataclass(frozen=True)
class ActResult:
    """A policy's answer to one request."""

    action: str
    """The chosen action text."""
    logprob: float | None = None
    """Log-probability of the chosen action under the policy, when it has one."""
    tokens: int = 0
    """Tokens processed for this request (prompt + candidates or generation), for throughput stats."""
    info: dict = field(default_factory=dict)
    """Backend-specific extras (e.g. all candidate scores)."""


@runtime_checkable
class Policy(Protocol):
    """A shopping policy: many requests in, one result per request out, in the same order."""

    def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        """Answer every request; must not raise for a well-formed request (pick a valid action)."""
        ...


def choose(scores: np.ndarray, temperature: float, seed: int | Sequence[int], keys: Sequence[str]) -> int:
    """The index a policy picks among ``keys`` (the options' texts) scored ``scores``: the argmax at
    ``temperature <= 0``, else a draw from the softmax of ``scores / temperature``, in two Gumbel-max
    steps: an action template (``actions.action_template``: ``open product``, ``exit``, ...) by its
    options' total probability, then one of its options, each option's and template's noise fixed by
    the seed and its text (``keyed_gumbel``). Every policy uses this rule, so backends agree, and a
    buyer replayed under a storefront change (same seed, same step) keeps its choice unless the
    change moved it: reordering the options changes nothing, raising one option's score moves a
    choice only to it or its template, and a listing of other products at the same total
    probability keeps the choice of opening one (benchmarks/paired_draw.py)."""
    if temperature <= 0:
        return int(np.argmax(scores))
    z = np.asarray(scores, dtype=np.float64) / temperature
    templates = [_template(k) for k in keys]
    names = sorted(set(templates))
    if len(names) > 1:
        place = {n: i for i, n in enumerate(names)}
        group = np.array([place[t] for t in templates])
        mass = np.full(len(names), -np.inf)
        np.logaddexp.at(mass, group, z)
        picked = int(np.argmax(mass + keyed_gumbel([TEMPLATE_KEY + n for n in names], seed)))
        within = np.flatnonzero(group == picked)
    else:
        within = np.arange(len(z))
    noise = keyed_gumbel([keys[i] for i in within], seed)
    return int(within[np.argmax(z[within] + noise)])


@functools.lru_cache(maxsize=1 << 16)
def _template(action: str) -> str:
    return action_template(action)


def keyed_gumbel(keys: Sequence[str], seed: int | Sequence[int]) -> np.ndarray:
    """Standard Gumbel noise, one draw per key, fixed by ``(seed, key)`` alone (``stable_hash``'s top
    53 bits)."""
    salt = ",".join(str(int(s)) for s in np.atleast_1d(seed))
    bits = [stable_hash(f"{salt}\x1f{key}") >> 10 for key in keys]
    u = (np.array(bits, dtype=np.float64) + 0.5) / 2.0**53
    return -np.log(-np.log(u))


def stable_hash(text: str) -> int:
    """A 63-bit hash of a string that, unlike ``hash``, is the same in every process."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") >> 1
