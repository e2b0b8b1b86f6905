"""The VQ-VAE report's one-line reading of a type."""

from __future__ import annotations

import dataclasses

from learners.vqvae.report import FUNNEL, TypeProfile, describe

AVERAGE = TypeProfile(
    code=-1,
    buyers=100,
    share=1.0,
    conversion=0.1,
    events_per_buyer=10.0,
    funnel=dict.fromkeys(FUNNEL, 0.6),
    gap_profile={},
    median_gap_s=30.0,
    coherence=0.0,
    top_categories=[],
)


def test_a_type_that_picks_cheap_or_dear_products_is_read_so() -> None:
    cheap = dataclasses.replace(AVERAGE, code=0, price_index=-0.35)
    dear = dataclasses.replace(AVERAGE, code=1, price_index=0.3)
    usual = dataclasses.replace(AVERAGE, code=2, price_index=0.05)
    assert describe(cheap, AVERAGE).endswith("; picks cheap products")
    assert describe(dear, AVERAGE).endswith("; picks dear products")
    assert "picks" not in describe(usual, AVERAGE)


def test_a_type_that_seeks_sales_is_read_so() -> None:
    population = dataclasses.replace(AVERAGE, markdown_share=0.3)
    hunter = dataclasses.replace(population, code=0, markdown_share=0.55)
    usual = dataclasses.replace(population, code=1, markdown_share=0.36)
    assert describe(hunter, population).endswith("; seeks sales (55% of its product events on sale)")
    assert "sales" not in describe(usual, population)
    assert "sales" not in describe(dataclasses.replace(AVERAGE, code=2), AVERAGE)  # a log without sales
