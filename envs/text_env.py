"""``StorefrontEnv``: a buyer session in a merchant's storefront, as text in and text out.

Observation: the page text (``Storefront.observe``; a goal task's page states the goal and marks the
goal product wherever it shows it, envs/render.py). Action: one of the page's action strings,
matched exactly after whitespace normalisation (never evaluated). ``info`` carries the page type,
the valid actions, the cart, the count of invalid actions, the merchant, the persona and the goal.

Episode end: ``terminated`` when an order is placed (``end_on_purchase``), on ``exit``, or on an
invalid action when ``invalid_action="terminate"``; ``truncated`` after ``max_steps`` steps
(``goal_max_steps`` = 20 for goal tasks). Reward 1 for the step that buys the goal product, else 0.
An invalid action (default ``invalid_action="count"``) leaves the state unchanged and is counted.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import pyarrow.parquet as pq

from envs.catalog import CATALOGS_FILE, Catalog, PreparedCatalogs
from envs.render import MAX_OBSERVATION_CHARS
from envs.spaces import UnicodeText
from envs.storefront import InvalidAction, SessionState, Storefront

MERCHANTS_FILE = "merchants.parquet"
MAX_ACTION_CHARS = 256
NO_PERSONA = -1
"""``info["persona"]`` when no persona code was given (an int, so vector envs batch it as ints)."""


@functools.lru_cache(maxsize=8)
def prepared_catalogs(data_dir: str) -> PreparedCatalogs:
    """One catalogue source per prepared directory in a process (catalogs.parquet read once)."""
    return PreparedCatalogs(data_dir)


@functools.lru_cache(maxsize=1024)
def shared_storefront(
    data_dir: str, merchant: str, storefront_cls: type[Storefront] = Storefront
) -> Storefront:
    """One storefront per (directory, merchant, class) in a process: the hundreds of envs an env
    runner hosts share its catalog and listing caches instead of each reading Parquet."""
    return storefront_cls(prepared_catalogs(data_dir).get(merchant))


@functools.lru_cache(maxsize=16)
def merchant_ids(data_dir: str) -> tuple[str, ...]:
    """Merchants of a prepared directory, sorted (from merchants.parquet, else catalogs.parquet)."""
    path = Path(data_dir) / MERCHANTS_FILE
    if not path.exists():
        path = Path(data_dir) / CATALOGS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{data_dir}: no {MERCHANTS_FILE} or {CATALOGS_FILE}; run `simpersona prepare` first"
        )
    return tuple(sorted(set(pq.read_table(path, columns=["merchant_id"]).column(0).to_pylist())))


@dataclass(frozen=True)
class EpisodeRules:
    """When an episode ends; the text and the browser env share these so both end alike."""

    max_steps: int = 50
    """Steps before truncation without a goal."""
    goal_max_steps: int = 20
    """Steps before truncation in a goal task."""
    invalid_action: str = "count"
    """'count' an invalid action and go on, or 'terminate' the episode."""
    end_on_purchase: bool = True
    """Whether placing an order ends the episode."""

    def __post_init__(self) -> None:
        if self.invalid_action not in ("count", "terminate"):
            raise ValueError(f"invalid_action must be 'count' or 'terminate', got {self.invalid_action!r}")

    def end(self, *, exited: bool, purchased: bool, valid: bool, steps: int, goal: bool) -> tuple[bool, bool]:
        """(terminated, truncated) after a step."""
        terminated = exited or (purchased and self.end_on_purchase)
        terminated = terminated or (not valid and self.invalid_action == "terminate")
        limit = self.goal_max_steps if goal else self.max_steps
        return terminated, not terminated and steps >= limit


def check_render_mode(render_mode: str | None) -> None:
    if render_mode not in (None, "ansi"):
        raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")


class StorefrontEnv(gym.Env[str, str]):
    """One simulated buyer session; see the module docstring for the contract."""

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        data: str | Path | None = None,
        catalog: Catalog | Sequence[Catalog] | Mapping[str, Catalog] | None = None,
        merchant: str | None = None,
        max_steps: int = 50,
        goal_max_steps: int = 20,
        invalid_action: str = "count",
        end_on_purchase: bool = True,
        storefront_cls: type[Storefront] = Storefront,
        render_mode: str | None = None,
    ) -> None:
        if (data is None) == (catalog is None):
            raise ValueError("StorefrontEnv needs exactly one of data=PREPARED_DIR or catalog=Catalog(s)")
        self.rules = EpisodeRules(max_steps, goal_max_steps, invalid_action, end_on_purchase)
        check_render_mode(render_mode)
        self.data = None if data is None else str(Path(data).resolve())
        self.storefront_cls = storefront_cls
        self._local: dict[str, Storefront] = {}
        if catalog is not None:
            if isinstance(catalog, Catalog):
                cats = [catalog]
            else:
                cats = list(catalog.values()) if isinstance(catalog, Mapping) else list(catalog)
            self._local = {c.merchant_id: storefront_cls(c) for c in cats}
        self.merchants = tuple(sorted(self._local)) if catalog is not None else merchant_ids(self.data or "")
        if merchant is not None and merchant not in self.merchants:
            raise ValueError(f"merchant {merchant!r} is not in {self.data or 'the given catalogs'}")
        self.default_merchant = merchant
        self.render_mode = render_mode
        self.observation_space = UnicodeText(MAX_OBSERVATION_CHARS)
        self.action_space = UnicodeText(MAX_ACTION_CHARS)
        self.storefront: Storefront | None = None
        self.state: SessionState | None = None
        # Valid actions of the current state, computed once per step for the check, the text and info.
        self.actions: list[str] = []
        self.persona = NO_PERSONA
        self.steps = 0
        self.invalid_actions = 0

    def storefront_for(self, merchant: str) -> Storefront:
        """The (shared) storefront of a merchant."""
        if self.data is None:
            if merchant not in self._local:
                raise ValueError(
                    f"merchant {merchant!r} is not among the given catalogs {sorted(self._local)[:5]}"
                )
            return self._local[merchant]
        if merchant not in self.merchants:
            raise ValueError(f"merchant {merchant!r} is not in {self.data}")
        return shared_storefront(self.data, merchant, self.storefront_cls)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start a session. ``options``: ``merchant`` (default: the constructor's, else one drawn with
        the env's seeded generator), ``persona`` (int code), ``goal`` (product id or None)."""
        super().reset(seed=seed)
        options = options or {}
        merchant = options.get("merchant") or self.default_merchant
        if merchant is None:
            merchant = self.merchants[int(self.np_random.integers(len(self.merchants)))]
        self.storefront = self.storefront_for(str(merchant))
        persona = options.get("persona")
        self.persona = NO_PERSONA if persona is None else int(persona)
        self.state = self.storefront.initial_state(goal=options.get("goal"))
        self.steps = 0
        self.invalid_actions = 0
        return self._observe(valid=True, event=None)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.state is None or self.storefront is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        state, sf = self.state, self.storefront
        self.steps += 1
        try:
            state, event = sf.step(state, str(action), self.actions)
        except InvalidAction:
            self.invalid_actions += 1
            event, valid = None, False
        else:
            valid = True
        purchased = event is not None and event.event_type == "purchase"
        reward = 1.0 if purchased and sf.goal_reached(state) and not sf.goal_reached(self.state) else 0.0
        self.state = state
        terminated, truncated = self.rules.end(
            exited=state.exited,
            purchased=purchased,
            valid=valid,
            steps=self.steps,
            goal=state.goal is not None,
        )
        obs, info = self._observe(valid=valid, event=event)
        return obs, reward, terminated, truncated, info

    def _observe(self, valid: bool, event: Any) -> tuple[str, dict[str, Any]]:
        state, sf = self.state, self.storefront
        assert state is not None and sf is not None
        self.actions = sf.valid_actions(state)
        return sf.observe(state, self.actions), {
            "page": state.page.kind,
            "valid_actions": list(self.actions),
            "cart": state.cart,
            "invalid_actions": self.invalid_actions,
            "valid": valid,
            "event": None if event is None else event.event_type,
            "merchant": sf.merchant_id,
            "persona": self.persona,
            "goal": state.goal,
            "steps": self.steps,
            "converted": bool(state.purchased),
        }

    def render(self) -> str | None:
        if self.render_mode == "ansi" and self.state is not None and self.storefront is not None:
            return self.storefront.observe(self.state)
        return None
