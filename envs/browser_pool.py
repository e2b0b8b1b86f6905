"""One headless Chromium, a pool of browser contexts, and the event loop that drives them.

Playwright's async API needs a running event loop while Gymnasium's API is synchronous, so the pool
owns an asyncio loop on a background thread and ``run`` submits coroutines to it. Each env leases one
context (with one page) for its lifetime; the context is replaced every ``recycle_every`` episodes,
because long-lived contexts leak memory, and whenever its page has crashed or been closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from playwright.async_api import Browser, BrowserContext, Page, Playwright, Route, async_playwright
from playwright.async_api import Error as PlaywrightError

T = TypeVar("T")

# Without the background-networking flags Chromium keeps dialling hosts this machine cannot reach.
CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@dataclass
class BrowserPoolConfig:
    """How the shared browser is launched and how its contexts are handed out."""

    executable_path: str = "/usr/bin/chromium"
    """Chromium binary (Debian's package; `playwright install` cannot download browsers offline)."""
    max_contexts: int = 8
    """Most contexts leased at once; a lease beyond that waits up to `lease_timeout_s`."""
    recycle_every: int = 20
    """Replace a context after this many episodes (long-lived contexts leak memory)."""
    launch_timeout_s: float = 60.0
    """Seconds allowed for starting Playwright and launching Chromium."""
    lease_timeout_s: float = 60.0
    """Seconds a lease waits for a free context slot before failing."""


def origin_of(url: str) -> str:
    """``scheme://host:port`` of a URL (the unit the same-origin guard compares)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class ContextLease:
    """One browser context with one page, held by one env; see ``new_episode``."""

    def __init__(self, pool: BrowserPool, origin: str) -> None:
        self._pool = pool
        self.origin = origin
        self.context: BrowserContext | None = None
        self.page: Page | None = None
        self.episodes = 0
        self.contexts_opened = 0
        self.blocked_urls: list[str] = []
        self._crashed = False

    @property
    def healthy(self) -> bool:
        """Whether the page can still be driven (not crashed, not closed, browser alive)."""
        return (
            self.page is not None
            and not self._crashed
            and not self.page.is_closed()
            and self._pool.browser_connected
        )

    async def new_episode(self) -> Page:
        """The page for a fresh episode: a new context when due for recycling or broken, else the
        same context with its cookies cleared (so the storefront starts a new session)."""
        due = self.episodes >= self._pool.config.recycle_every
        if self.context is None or due or not self.healthy:
            await self._replace_context()
        else:
            assert self.context is not None
            await self.context.clear_cookies()
        self.episodes += 1
        assert self.page is not None
        return self.page

    async def _replace_context(self) -> None:
        await self.close_context()
        browser = await self._pool.ensure_browser()
        context = await browser.new_context(java_script_enabled=True, service_workers="block")
        await context.route("**/*", self._guard_origin)
        page = await context.new_page()
        page.on("crash", self._mark_crashed)
        self.context, self.page = context, page
        self.episodes = 0
        self.contexts_opened += 1
        self._crashed = False

    async def _guard_origin(self, route: Route) -> None:
        url = route.request.url
        if origin_of(url) == self.origin:
            await route.continue_()
        else:
            self.blocked_urls.append(url)
            await route.abort("blockedbyclient")

    def _mark_crashed(self, _page: Page) -> None:
        self._crashed = True

    def mark_broken(self) -> None:
        """Flag the page as unusable (e.g. after a timeout) so the next episode gets a new context."""
        self._crashed = True

    async def close_context(self) -> None:
        """Close this lease's context, tolerating one that already died with its browser."""
        context, self.context, self.page = self.context, None, None
        if context is not None:
            with contextlib.suppress(PlaywrightError):  # a crashed browser leaves nothing to close
                await context.close()

    def release(self) -> None:
        """Close the context and give the slot back to the pool."""
        self._pool.release(self)


class BrowserPool:
    """A shared Chromium plus an asyncio loop thread; lease contexts with ``lease(origin)``."""

    def __init__(self, config: BrowserPoolConfig | None = None) -> None:
        self.config = config or BrowserPoolConfig()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="browser-pool", daemon=True)
        self._thread.start()
        self._slots = threading.BoundedSemaphore(self.config.max_contexts)
        self._leases: set[ContextLease] = set()
        self._lock = threading.Lock()
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._browser_lock: asyncio.Lock | None = None
        self.browsers_launched = 0
        self.closed = False
        try:
            self.run(self.ensure_browser(), timeout=self.config.launch_timeout_s)
        except BaseException:
            self.close()
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the pool's loop and wait for it; on timeout it is cancelled and
        ``TimeoutError`` raised."""
        if self.closed:
            coro.close()
            raise RuntimeError("BrowserPool is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    @property
    def browser_connected(self) -> bool:
        return self._browser is not None and self._browser.is_connected()

    async def ensure_browser(self) -> Browser:
        """The running browser, (re)launched when absent or disconnected (crashed)."""
        if self._browser_lock is None:
            self._browser_lock = asyncio.Lock()
        async with self._browser_lock:
            if self._playwright is None:
                self._playwright = await async_playwright().start()
            if self._browser is None or not self._browser.is_connected():
                self._browser = await self._playwright.chromium.launch(
                    executable_path=self.config.executable_path,
                    args=list(CHROMIUM_ARGS),
                    headless=True,
                )
                self.browsers_launched += 1
            return self._browser

    def lease(self, origin: str) -> ContextLease:
        """Reserve a context slot whose requests are confined to ``origin``; the context itself is
        opened by the first ``new_episode``."""
        if not self._slots.acquire(timeout=self.config.lease_timeout_s):
            raise TimeoutError(
                f"no free browser context after {self.config.lease_timeout_s}s "
                f"(max_contexts={self.config.max_contexts}); release leases or raise max_contexts"
            )
        lease = ContextLease(self, origin)
        with self._lock:
            self._leases.add(lease)
        return lease

    def release(self, lease: ContextLease) -> None:
        with self._lock:
            if lease not in self._leases:
                return
            self._leases.discard(lease)
        if not self.closed:
            self.run(lease.close_context(), timeout=self.config.launch_timeout_s)
        self._slots.release()

    async def _shutdown(self) -> None:
        for lease in list(self._leases):
            await lease.close_context()
        if self._browser is not None:
            with contextlib.suppress(PlaywrightError):  # already gone with a crashed process
                await self._browser.close()
        if self._playwright is not None:
            await self._playwright.stop()
        self._browser = self._playwright = None

    def close(self) -> None:
        """Close every context, the browser and Playwright, then stop the loop thread."""
        if self.closed:
            return
        try:
            if self._thread.is_alive():
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(
                    self.config.launch_timeout_s
                )
        finally:
            self.closed = True
            self._leases.clear()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def __deepcopy__(self, memo: dict) -> BrowserPool:
        # A handle on a running resource: gymnasium.make deep-copies env kwargs, and every env
        # made with this one must share it, not get a copy.
        return self

    def __enter__(self) -> BrowserPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
