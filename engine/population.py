"""Simulated buyer populations: merchant -> categorical over persona codes -> one code per buyer.

A merchant's code distribution is the share ``p`` of its real visits made by buyers of each codebook
entry (``merchant_distributions.parquet`` of the assignment step): a simulated buyer plays one visit,
so a type whose buyers come back often is drawn as often as it visits. Sampling is seeded per
merchant from (run seed, merchant id), so adding a merchant to a run never changes another
merchant's buyers, and every simulated buyer carries its own seed derived from (run seed, buyer
index) so its episode does not depend on which runner plays it or when. Goal tasks give each buyer
a target product drawn from its merchant's catalogue with a generator seeded by the buyer's seed only
(``GOAL_DRAWS``): weighted by popularity, or uniformly among the products the home page does not
feature, so that the buyer has to search or browse for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from envs.catalog import Catalog
from envs.storefront import FEATURED
from learners.agent.policy import stable_hash

DISTRIBUTION_COLUMNS = ("merchant_id", "code", "p")
GOAL_STREAM = 0x60A1
"""Second SeedSequence entry of the goal draw, so it is independent of the episode's own stream."""
GOAL_DRAWS = ("popular", "off-home")
"""How a goal product is drawn. ``popular``: popularity-weighted over the whole catalogue, so the goal
is often one of the FEATURED products of the home page, where a goal task ends in three steps (open,
buy now, place order). ``off-home``: uniform over the products the home page does not feature, so the
buyer must search or open a category to find it; it needs more than FEATURED products."""


@dataclass(frozen=True)
class SimBuyer:
    """One simulated buyer: who it shops at, which persona it has, and its private seed."""

    sim_buyer_id: int
    """Global index of the buyer in the run's population (0..N-1); stable across runs of one config."""
    merchant_id: str
    """The storefront the buyer visits."""
    code: int
    """Persona code (codebook index) drawn from the merchant's distribution."""
    seed: int
    """Episode seed derived from (run seed, index in its replicate); the env and the policy derive from it."""
    run_seed: int = 0
    """The run seed the buyer was drawn with (differs between replicates of one run)."""
    goal: str | None = None
    """Target product id of a goal task, or None for free shopping."""


def buyer_seed(run_seed: int, index: int) -> int:
    """The episode seed of buyer ``index`` in a run seeded ``run_seed`` (order-independent)."""
    return int(np.random.SeedSequence([run_seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def step_seed(seed: int, step: int) -> int:
    """The policy's sampling seed for one step of one buyer's episode."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def goal_draw_fits(catalog: Catalog, draw: str) -> bool:
    """Whether ``draw`` can give this catalogue a goal: off-home needs a product the home page does
    not feature."""
    return draw != "off-home" or len(catalog.products) > FEATURED


def goal_product(catalog: Catalog, seed: int, draw: str = "popular") -> str:
    """A buyer's target product (``GOAL_DRAWS``; popular: uniform if no product has popularity)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, GOAL_STREAM]))
    if draw == "off-home":
        n = len(catalog.products)
        if not goal_draw_fits(catalog, draw):
            shown = "its only product is" if n == 1 else f"all {n} of its products are"
            raise ValueError(
                f"merchant {catalog.merchant_id!r}: {shown} featured on the home page, so an off-home goal"
                f" cannot be drawn; use goal draw 'popular' for it, or merchants with more than {FEATURED} products"
            )
        return catalog.products[FEATURED + int(rng.integers(len(catalog.products) - FEATURED))].product_id
    if draw != "popular":
        raise ValueError(f"goal draw {draw!r}: expected one of {', '.join(GOAL_DRAWS)}")
    weights = np.array([max(p.popularity, 0.0) for p in catalog.products], dtype=np.float64)
    total = weights.sum()
    p = weights / total if total > 0 else None
    return catalog.products[int(rng.choice(len(catalog.products), p=p))].product_id


def with_goals(
    buyers: Sequence[SimBuyer], catalogs: Mapping[str, Catalog], draw: str = "popular"
) -> list[SimBuyer]:
    """The buyers, each with a goal product from its merchant's catalogue (see ``goal_product``)."""
    return [replace(b, goal=goal_product(catalogs[b.merchant_id], b.seed, draw)) for b in buyers]


def largest_remainder_counts(p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``n * p`` (Hamilton's method; ties broken at random)."""
    quotas = n * p
    counts = np.floor(quotas).astype(np.int64)
    short = n - int(counts.sum())
    if short > 0:
        remainders = quotas - counts
        # Random secondary key so equal remainders do not always favour low codes.
        order = np.lexsort((rng.random(len(p)), -remainders))
        counts[order[:short]] += 1
    return counts


class PopulationSampler:
    """Per-merchant categorical distributions over persona codes, and seeded sampling from them."""

    def __init__(
        self,
        table: pa.Table,
        smoothing: float = 0.0,
        codebook_size: int | None = None,
        source: str = "merchant distributions",
    ) -> None:
        missing = [c for c in DISTRIBUTION_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{source}: missing column(s) {missing}; expected {list(DISTRIBUTION_COLUMNS)}"
                " as written by the VQ-VAE's merchant distributions step"
            )
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        merchants = table.column("merchant_id").to_pylist()
        codes = np.asarray(table.column("code").to_numpy(zero_copy_only=False), dtype=np.int64)
        probs = np.asarray(table.column("p").to_numpy(zero_copy_only=False), dtype=np.float64)
        for row, (m, c, p) in enumerate(zip(merchants, codes, probs, strict=True)):
            if m is None or c < 0 or not np.isfinite(p) or p < 0:
                raise ValueError(
                    f"{source}: row {row} (merchant_id={m!r}, code={c}, p={p}) is invalid:"
                    " merchant_id must be set, code >= 0, p finite and >= 0"
                )
        k = int(codes.max()) + 1 if len(codes) else 0
        if codebook_size is not None:
            if codebook_size < k:
                raise ValueError(f"{source}: code {k - 1} does not fit codebook_size={codebook_size}")
            k = codebook_size
        self.codebook_size = k
        self.smoothing = float(smoothing)
        self._probs: dict[str, np.ndarray] = {}
        for m in sorted(set(merchants)):
            self._probs[m] = np.zeros(k)
        for m, c, p in zip(merchants, codes, probs, strict=True):
            self._probs[m][c] += p
        for m, vec in self._probs.items():
            vec += self.smoothing
            total = vec.sum()
            if total <= 0:
                raise ValueError(
                    f"{source}: merchant {m!r} has no probability mass; give it rows with p > 0"
                    " or use smoothing > 0"
                )
            vec /= total

    @classmethod
    def from_parquet(
        cls, path: str | Path, smoothing: float = 0.0, codebook_size: int | None = None
    ) -> PopulationSampler:
        """Load ``merchant_distributions.parquet`` (merchant_id, code, p, n, visits, buyer_share)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: merchant distributions not found; run the VQ-VAE assignment"
                " step first (it writes merchant_distributions.parquet)"
            )
        return cls(pq.read_table(path), smoothing=smoothing, codebook_size=codebook_size, source=str(path))

    @property
    def merchants(self) -> list[str]:
        """Merchant ids with a distribution, sorted."""
        return list(self._probs)

    def probabilities(self, merchant_id: str) -> np.ndarray:
        """The merchant's categorical over codes (length ``codebook_size``, sums to 1)."""
        try:
            return self._probs[merchant_id].copy()
        except KeyError:
            raise ValueError(
                f"merchant {merchant_id!r} has no code distribution; known merchants:"
                f" {self.merchants[:10]}{' ...' if len(self._probs) > 10 else ''}"
            ) from None

    def sample_codes(self, merchant_id: str, n: int, seed: int, stratified: bool = True) -> np.ndarray:
        """``n`` codes for one merchant: exact largest-remainder quotas shuffled, or i.i.d. draws."""
        p = self.probabilities(merchant_id)
        rng = np.random.default_rng(np.random.SeedSequence([seed, stable_hash(merchant_id)]))
        if not stratified:
            return rng.choice(len(p), size=n, p=p).astype(np.int64)
        counts = largest_remainder_counts(p, n, rng)
        codes = np.repeat(np.arange(len(p), dtype=np.int64), counts)
        rng.shuffle(codes)
        return codes

    def population(
        self,
        merchants: Sequence[str],
        buyers_per_merchant: int | Mapping[str, int],
        seed: int,
        stratified: bool = True,
        replicates: int = 1,
    ) -> list[SimBuyer]:
        """The run's buyers, merchant after merchant in the given order, with global ids and seeds.

        Replicate ``r`` is the population of run seed ``seed + r`` (same buyers and seeds as a run with
        that seed), its ids continuing after the previous replicate's. ``buyers_per_merchant`` is one
        count for all or a count per merchant.
        """
        if replicates < 1:
            raise ValueError(f"replicates must be >= 1, got {replicates}")
        buyers: list[SimBuyer] = []
        for run_seed in range(seed, seed + replicates):
            start = len(buyers)
            for merchant in merchants:
                count = (
                    buyers_per_merchant
                    if isinstance(buyers_per_merchant, int)
                    else buyers_per_merchant[merchant]
                )
                for code in self.sample_codes(merchant, count, run_seed, stratified):
                    index = len(buyers) - start
                    buyers.append(
                        SimBuyer(len(buyers), merchant, int(code), buyer_seed(run_seed, index), run_seed)
                    )
        return buyers
