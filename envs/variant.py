"""Storefront variants: a ``Storefront`` subclass registered under its own Gymnasium id.

A variant overrides any of these ``Storefront`` methods, calling ``super()`` for everything it does
not change, and stays pure and deterministic (same state and action, same result):

- ``valid_actions(state) -> list[str]``: add or remove actions of a page;
- ``apply(state, action) -> (state, event)``: the transition of its own actions (called only with a
  normalized action that ``valid_actions`` offered); emit canonical events so rollouts stay comparable;
- ``view(state, actions) -> PageView``: add content, e.g. ``dataclasses.replace(view, lines=...)``.

``register_variant("me/PromoStorefront-v0", PromoStorefront)`` then makes it available to
``gymnasium.make("me/PromoStorefront-v0", data=...)``; it reuses ``StorefrontEnv`` (same spaces,
info, rewards, limits). The Gymnasium registry does not travel into Ray workers: register in the
module that defines the variant and import that module in each worker. See
examples/custom_storefront.py. Built-in, parameterised changes (price, listing order, banner,
one-page checkout, ...) need no subclass: they are treatments, envs/treatments.py.
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

from envs.storefront import Storefront

ENTRY_POINT = "envs.text_env:StorefrontEnv"


def register_variant(env_id: str, storefront_cls: type[Storefront], **env_kwargs: Any) -> None:
    """Register ``storefront_cls`` as ``env_id`` (idempotent for the same class and arguments)."""
    if not (isinstance(storefront_cls, type) and issubclass(storefront_cls, Storefront)):
        raise TypeError(
            f"{storefront_cls!r} is not a Storefront subclass; a variant must subclass envs.storefront.Storefront"
        )
    kwargs = {"storefront_cls": storefront_cls, **env_kwargs}
    if env_id in registry:
        if registry[env_id].kwargs == kwargs:
            return
        raise ValueError(
            f"{env_id} is already registered with {registry[env_id].kwargs}; pick a new id or version"
        )
    register(id=env_id, entry_point=ENTRY_POINT, kwargs=kwargs)
