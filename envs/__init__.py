"""Gymnasium storefronts. ``import envs`` registers them:

- ``simpersona/Storefront-v0``: the text env (``envs.text_env.StorefrontEnv``), e.g.
  ``gymnasium.make("simpersona/Storefront-v0", data=PREPARED_DIR)``.
- ``simpersona/BrowserStorefront-v0``: the same storefront served over HTTP and driven in Chromium
  by Playwright (``envs.browser_env.BrowserStorefrontEnv``).
- ``simpersona/TreatedStorefront-v0``: the text env under a built-in treatment (a what-if arm: price,
  order, banner, ...; ``envs.treatments``), e.g. ``gymnasium.make(..., data=DIR, treatment={"kind":
  "price", "percent": -10})``.

The Gymnasium registry does not travel into Ray workers: import ``envs`` inside the worker.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

STOREFRONT_ID = "simpersona/Storefront-v0"
BROWSER_STOREFRONT_ID = "simpersona/BrowserStorefront-v0"
TREATED_STOREFRONT_ID = "simpersona/TreatedStorefront-v0"


def register_envs() -> None:
    """Register the project's envs (idempotent: importing twice, or in each worker, is fine)."""
    if STOREFRONT_ID not in registry:
        register(id=STOREFRONT_ID, entry_point="envs.text_env:StorefrontEnv", disable_env_checker=False)
    if BROWSER_STOREFRONT_ID not in registry:
        # An entry point string, so `import envs` does not import Playwright.
        register(
            id=BROWSER_STOREFRONT_ID,
            entry_point="envs.browser_env:BrowserStorefrontEnv",
            disable_env_checker=False,
        )
    if TREATED_STOREFRONT_ID not in registry:
        register(
            id=TREATED_STOREFRONT_ID,
            entry_point="envs.treatments:TreatedStorefrontEnv",
            disable_env_checker=False,
        )


register_envs()
