"""PopulationSampler: seeded, stratified quotas exact, i.i.d. draws match the distribution at large N;
replicates; goal products."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from engine.population import (
    PopulationSampler,
    buyer_seed,
    goal_product,
    largest_remainder_counts,
    with_goals,
)
from envs.catalog import Catalog
from envs.storefront import FEATURED, Storefront

P_A = {0: 0.5, 1: 0.3, 2: 0.15, 3: 0.05}
P_B = {2: 0.7, 4: 0.3}


def table() -> pa.Table:
    rows = [("A", c, p) for c, p in P_A.items()] + [("B", c, p) for c, p in P_B.items()]
    return pa.table(
        {
            "merchant_id": [r[0] for r in rows],
            "code": [r[1] for r in rows],
            "p": [r[2] for r in rows],
            "n": [int(r[2] * 100) for r in rows],
        }
    )


def test_probabilities_normalised_and_smoothed():
    s = PopulationSampler(table())
    assert s.codebook_size == 5
    assert np.allclose(s.probabilities("B"), [0, 0, 0.7, 0, 0.3])
    smoothed = PopulationSampler(table(), smoothing=0.1, codebook_size=8).probabilities("B")
    expected = (np.array([0, 0, 0.7, 0, 0.3, 0, 0, 0]) + 0.1) / (1 + 0.8)
    assert np.allclose(smoothed, expected)


def test_stratified_counts_are_largest_remainder_quotas():
    s = PopulationSampler(table())
    n = 37
    codes = s.sample_codes("A", n, seed=3, stratified=True)
    counts = np.bincount(codes, minlength=5)
    quotas = n * s.probabilities("A")
    assert counts.sum() == n
    assert np.all(np.abs(counts - quotas) < 1)
    # 37 * [.5,.3,.15,.05] = 18.5, 11.1, 5.55, 1.85 -> floors 18,11,5,1 (35); remainders .5,.1,.55,.85 -> +1 to codes 3 and 2
    assert counts[:4].tolist() == [18, 11, 6, 2]
    assert codes.tolist() != sorted(codes.tolist())  # shuffled, not grouped


def test_largest_remainder_sum_and_ties():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 100):
        counts = largest_remainder_counts(np.full(3, 1 / 3), n, rng)
        assert counts.sum() == n and counts.max() - counts.min() <= 1


@pytest.mark.parametrize("merchant", ["A", "B"])
def test_iid_draws_pass_chi_square_and_js_bound(merchant):
    s = PopulationSampler(table())
    p = s.probabilities(merchant)
    n = 200_000
    counts = np.bincount(s.sample_codes(merchant, n, seed=11, stratified=False), minlength=len(p))
    support = p > 0
    assert counts[~support].sum() == 0
    _, pvalue = stats.chisquare(counts[support], n * p[support])
    assert pvalue > 1e-4
    # JS divergence of the empirical vs true distribution shrinks like O(K/N); generous bound.
    assert jensenshannon(counts / n, p, base=2) ** 2 < 1e-3


def test_seeded_and_merchant_independent():
    s = PopulationSampler(table())
    a = s.population(["A", "B"], 20, seed=5)
    assert a == s.population(["A", "B"], 20, seed=5)
    assert [b.code for b in a] != [b.code for b in s.population(["A", "B"], 20, seed=6)]
    only_b = s.population(["B"], 20, seed=5)
    assert [b.code for b in only_b] == [b.code for b in a[20:]]  # adding merchant A leaves B's codes alone
    assert [b.sim_buyer_id for b in a] == list(range(40))
    assert [b.seed for b in a] == [buyer_seed(5, i) for i in range(40)]
    assert len({b.seed for b in a}) == 40


def test_from_parquet_and_errors(tmp_path):
    path = tmp_path / "merchant_distributions.parquet"
    pq.write_table(table(), path)
    assert PopulationSampler.from_parquet(path).merchants == ["A", "B"]
    with pytest.raises(FileNotFoundError, match="merchant distributions not found"):
        PopulationSampler.from_parquet(tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match="missing column"):
        PopulationSampler(table().drop(["p"]))
    with pytest.raises(ValueError, match="no code distribution"):
        PopulationSampler(table()).probabilities("Z")
    bad = table().set_column(2, "p", pa.array([0.5, -0.3, 0.15, 0.05, 0.7, 0.3]))
    with pytest.raises(ValueError, match="row 1"):
        PopulationSampler(bad)


def test_replicates_are_the_populations_of_consecutive_seeds():
    s = PopulationSampler(table())
    both = s.population(["A", "B"], 10, seed=5, replicates=2)
    assert [b.sim_buyer_id for b in both] == list(range(40))
    assert [b.run_seed for b in both] == [5] * 20 + [6] * 20
    alone = s.population(["A", "B"], 10, seed=6)
    assert [(b.merchant_id, b.code, b.seed) for b in both[20:]] == [
        (b.merchant_id, b.code, b.seed) for b in alone
    ]
    with pytest.raises(ValueError, match="replicates"):
        s.population(["A"], 3, seed=0, replicates=0)


def test_goal_products_are_seeded_and_popularity_weighted():
    popularity = [0.5, 0.3, 0.2, 0.0]
    catalog = Catalog.from_records(
        "A", [{"product_id": f"p{i}", "popularity": w} for i, w in enumerate(popularity)]
    )
    seeds = [buyer_seed(1, i) for i in range(20_000)]
    goals = [goal_product(catalog, s) for s in seeds]
    assert goals[:50] == [goal_product(catalog, s) for s in seeds[:50]]  # a function of the buyer's seed
    counts = np.array([goals.count(f"p{i}") for i in range(4)])
    assert counts[3] == 0  # no popularity, never a goal
    _, pvalue = stats.chisquare(counts[:3], len(goals) * np.array(popularity[:3]))
    assert pvalue > 1e-4
    flat = Catalog.from_records("A", [{"product_id": f"q{i}", "popularity": 0.0} for i in range(3)])
    assert {goal_product(flat, s) for s in seeds[:200]} == {
        "q0",
        "q1",
        "q2",
    }  # uniform when nothing is popular
    buyers = with_goals(PopulationSampler(table()).population(["A"], 5, seed=2), {"A": catalog})
    assert [b.goal for b in buyers] == [goal_product(catalog, b.seed) for b in buyers]


def test_off_home_goals_are_drawn_uniformly_among_the_products_the_home_page_does_not_feature():
    catalog = Catalog.from_records("A", [{"product_id": f"p{i}", "popularity": 10.0 - i} for i in range(9)])
    featured = {p.product_id for p in Storefront(catalog).listing(Storefront(catalog).initial_state().page)}
    assert len(featured) == FEATURED
    seeds = [buyer_seed(3, i) for i in range(4_000)]
    goals = [goal_product(catalog, s, "off-home") for s in seeds]
    assert goals[:50] == [goal_product(catalog, s, "off-home") for s in seeds[:50]]
    others = sorted({p.product_id for p in catalog.products} - featured)
    assert sorted(set(goals)) == others  # never featured, every other product drawn
    _, pvalue = stats.chisquare([goals.count(g) for g in others])
    assert pvalue > 1e-4
    buyers = with_goals(PopulationSampler(table()).population(["A"], 5, seed=2), {"A": catalog}, "off-home")
    assert [b.goal for b in buyers] == [goal_product(catalog, b.seed, "off-home") for b in buyers]


def test_off_home_goals_need_a_product_beyond_the_home_page():
    small = Catalog.from_records("shop-7", [{"product_id": f"p{i}"} for i in range(FEATURED)])
    with pytest.raises(ValueError, match=r"'shop-7': all 5 of its products are featured.*'popular'"):
        goal_product(small, 1, "off-home")
    single = Catalog.from_records("brand-1", [{"product_id": "item-all"}])
    with pytest.raises(ValueError, match="'brand-1': its only product is featured"):
        goal_product(single, 1, "off-home")
    with pytest.raises(ValueError, match="goal draw 'rare'"):
        goal_product(small, 1, "rare")
