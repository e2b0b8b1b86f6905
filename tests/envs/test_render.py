"""Reading a rendered page's product rows back: ids, shown prices and badges, whatever ends a row."""

from __future__ import annotations

from envs.catalog import BESTSELLER, Catalog, Product
from envs.render import listed_products, mark_goal
from envs.storefront import Storefront


def test_listed_products_reads_each_row_in_order():
    products = (
        Product("a 1", "c0", 12.5, "Product a 1", 0.5, badge=BESTSELLER),
        Product("b2", "c0", None, "A bestseller | of sorts", 0.3),
        Product("c3", "c0", 7.0, "Product c3", 0.2, badge=BESTSELLER),
    )
    shop = Storefront(Catalog("m1", products))
    home = shop.observe(shop.initial_state())
    want = [("a 1", 12.5, BESTSELLER), ("b2", None, ""), ("c3", 7.0, BESTSELLER)]
    assert listed_products(home) == want
    # A goal task's marks and a cart's quantities end rows too.
    assert listed_products(mark_goal(home, "c3")) == want
    cart = shop.step(shop.step(shop.initial_state(), "open product c3")[0], "add to cart")[0]
    assert listed_products(shop.observe(shop.step(cart, "go to cart")[0])) == [("c3", 7.0, BESTSELLER)]
    assert listed_products("== Checkout ==\nno rows here") == []
