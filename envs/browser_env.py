"""``BrowserStorefrontEnv``: the storefront env, played in real Chromium against the web storefront.

Same contract as ``envs.text_env.StorefrontEnv`` (reset options, info keys, reward, termination):
the observation is read from the page through a selector mapping (``envs/web/page_reader.py``) and
rendered with the text env's ``render_text``, so both envs observe identical text for one state.
An action is matched to a control on the page (a link, a form button, the search box) and performed
by clicking or filling it; an action with no control is invalid, as in the text env.

Safety: every request leaving the storefront's origin is aborted by the context's route guard, and
a control whose link or form points elsewhere is refused (``info["blocked"]``) before any click.

Failures: a crashed or closed page, a dead browser or a step past ``step_timeout_s`` ends the
episode with ``truncated=True`` and ``info["browser_error"]``; the next ``reset`` opens a new
context (and relaunches Chromium if needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Locator, Page

from envs import storefront as sf
from envs.browser_pool import BrowserPool, BrowserPoolConfig, ContextLease, origin_of
from envs.catalog import Catalog
from envs.render import MAX_OBSERVATION_CHARS, render_text
from envs.spaces import UnicodeText
from envs.text_env import MAX_ACTION_CHARS, NO_PERSONA, EpisodeRules, check_render_mode, merchant_ids
from envs.web.page_reader import (
    EXTRACT_JS,
    ControlRef,
    PageRead,
    PageReadError,
    SelectorMap,
    load_selectors,
    read_page,
)
from envs.web.server import StorefrontServer


class BrowserFailure(RuntimeError):
    """The browser could not complete a step (crash, closed page, timeout)."""


def _locator(page: Page, ref: ControlRef) -> Locator:
    (selector, nth), *rest = ref.path
    loc = page.locator(selector).nth(nth)
    for selector, nth in rest:
        loc = loc.locator(selector).nth(nth)
    return loc


class BrowserStorefrontEnv(gym.Env[str, str]):
    """One buyer session in a real browser; see the module docstring and ``StorefrontEnv``."""

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
        template: str = "default",
        selectors: str | Path | None = None,
        server: StorefrontServer | None = None,
        pool: BrowserPool | None = None,
        step_timeout_s: float = 10.0,
        render_mode: str | None = None,
    ) -> None:
        if server is None and (data is None) == (catalog is None):
            raise ValueError(
                "BrowserStorefrontEnv needs a server, or exactly one of data=PREPARED_DIR or catalog="
            )
        self.rules = EpisodeRules(max_steps, goal_max_steps, invalid_action, end_on_purchase)
        check_render_mode(render_mode)
        self._own_server = server is None
        if server is None:
            if catalog is not None:
                server = StorefrontServer.from_catalogs(catalog, template)  # type: ignore[arg-type]
            else:
                server = StorefrontServer.from_data(str(data), [merchant] if merchant else None, template)
            server.start()
        self.server = server
        self.selectors: SelectorMap = load_selectors(selectors or server.template)
        self.merchants = (
            merchant_ids(str(Path(data).resolve()))
            if data is not None and self._own_server
            else server.merchants
        )
        if merchant is not None and merchant not in self.server.merchants:
            raise ValueError(
                f"merchant {merchant!r} is not served by {self.server.url} ({self.server.merchants[:5]})"
            )
        self.default_merchant = merchant
        self.step_timeout_s = step_timeout_s
        self.render_mode = render_mode
        self.observation_space = UnicodeText(MAX_OBSERVATION_CHARS)
        self.action_space = UnicodeText(MAX_ACTION_CHARS)
        self._own_pool = pool is None
        self.pool = pool or BrowserPool(BrowserPoolConfig(max_contexts=1))
        self.origin = origin_of(self.server.url)
        self._lease: ContextLease | None = None
        self.page_read: PageRead | None = None
        self.observation = ""
        self.merchant: str | None = None
        self.goal: str | None = None
        self.persona = NO_PERSONA
        self.steps = 0
        self.invalid_actions = 0
        self.purchased: set[str] = set()
        self.failure: str | None = None

    # ---- browser work (runs on the pool's loop) ------------------------------------------------
    async def _read(self, page: Page) -> PageRead:
        return read_page(await page.evaluate(EXTRACT_JS, self.selectors.spec))

    async def _open(self, url: str) -> PageRead:
        assert self._lease is not None
        page = await self._lease.new_episode()
        page.set_default_timeout(self.step_timeout_s * 1000)
        response = await page.goto(url, wait_until="domcontentloaded")
        if response is None or response.status >= 400:
            status = None if response is None else response.status
            text = "" if response is None else (await response.text())[:300]
            raise ValueError(f"{url}: the storefront answered {status}: {text}")
        return await self._read(page)

    async def _perform(self, ref: ControlRef, query: str | None) -> tuple[PageRead, int]:
        assert self._lease is not None and self._lease.page is not None
        page = self._lease.page
        if page.is_closed() or not self._lease.healthy:
            raise BrowserFailure("the page is closed or has crashed")
        async with page.expect_navigation(wait_until="domcontentloaded") as navigation:
            if query is not None:
                assert self.page_read is not None and self.page_read.search_input is not None
                await _locator(page, self.page_read.search_input).fill(query)
            await _locator(page, ref).click()
        response = await navigation.value
        return await self._read(page), (0 if response is None else response.status)

    def _run(self, coro: Any) -> Any:
        try:
            return self.pool.run(coro, timeout=2 * self.step_timeout_s + 5)
        except (PlaywrightError, BrowserFailure, PageReadError, TimeoutError) as err:
            if self._lease is not None:
                self._lease.mark_broken()
            raise BrowserFailure(
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ) from err

    # ---- Gymnasium API -------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start a session: ``options`` as ``StorefrontEnv.reset`` (merchant, persona, goal)."""
        super().reset(seed=seed)
        options = options or {}
        merchant = options.get("merchant") or self.default_merchant
        if merchant is None:
            merchant = self.merchants[int(self.np_random.integers(len(self.merchants)))]
        if merchant not in self.server.merchants:
            raise ValueError(f"merchant {merchant!r} is not served by {self.server.url}")
        persona = options.get("persona")
        self.merchant, self.goal = str(merchant), options.get("goal")
        self.persona = NO_PERSONA if persona is None else int(persona)
        self.steps = self.invalid_actions = 0
        self.purchased = set()
        self.failure = None
        if self._lease is None:
            self._lease = self.pool.lease(self.origin)
        url = self.server.start_url(self.merchant, self.goal)
        try:
            self.page_read = self._run(self._open(url))
        except BrowserFailure:  # one retry on a fresh context: the old one may have died between episodes
            self.page_read = self._run(self._open(url))
        return self._observe(valid=True, event=None)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.page_read is None or self.failure is not None:
            raise gym.error.ResetNeeded("call reset() before step() (and after a browser failure)")
        self.steps += 1
        action = sf.normalize_action(str(action))
        query = sf.search_query(action)
        ref = self.page_read.controls.get(sf.SEARCH_TEMPLATE if query is not None else action)
        if action == sf.SEARCH_TEMPLATE:
            ref = None
        extra: dict[str, Any] = {}
        event, valid = None, False
        if ref is not None and ref.target is not None and origin_of(ref.target) != self.origin:
            extra["blocked"] = ref.target
        elif ref is not None:
            try:
                page_read, status = self._run(self._perform(ref, query))
            except BrowserFailure as err:
                self.failure = str(err)
                obs, info = self._observe(valid=False, event=None)
                return obs, 0.0, False, True, {**info, "browser_error": self.failure}
            valid = status < 400
            self.page_read = page_read
            event = page_read.event if valid else None
        if not valid:
            self.invalid_actions += 1
        purchased = event == "purchase"
        newly = (
            purchased
            and self.goal is not None
            and self.goal in self.page_read.ordered
            and self.goal not in self.purchased
        )
        if purchased:
            self.purchased.update(self.page_read.ordered)
        terminated, truncated = self.rules.end(
            exited=valid and action == sf.EXIT,
            purchased=purchased,
            valid=valid,
            steps=self.steps,
            goal=self.goal is not None,
        )
        obs, info = self._observe(valid=valid, event=event)
        return obs, 1.0 if newly else 0.0, terminated, truncated, {**info, **extra}

    def _observe(self, valid: bool, event: str | None) -> tuple[str, dict[str, Any]]:
        read = self.page_read
        assert read is not None
        self.observation = render_text(read.view)
        return self.observation, {
            "page": read.view.kind,
            "valid_actions": list(read.view.actions),
            "cart": read.cart,
            "invalid_actions": self.invalid_actions,
            "valid": valid,
            "event": event,
            "merchant": self.merchant,
            "persona": self.persona,
            "goal": self.goal,
            "steps": self.steps,
            "converted": bool(self.purchased),
        }

    def render(self) -> str | None:
        return self.observation if self.render_mode == "ansi" and self.page_read is not None else None

    def close(self) -> None:
        if self._lease is not None and not self.pool.closed:
            self._lease.release()
        self._lease = None
        if self._own_pool:
            self.pool.close()
        if self._own_server:
            self.server.stop()
        super().close()
