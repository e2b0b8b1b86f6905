"""The web storefront over plain HTTP (no browser): sessions, actions as requests, selector mappings."""

from __future__ import annotations

import http.cookiejar
import random
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envs import storefront as sf
from envs.catalog import Catalog
from envs.storefront import Storefront
from envs.web.page_reader import BUTTON_ACTIONS, SelectorMappingError, load_selectors
from envs.web.server import SESSION_COOKIE, StorefrontServer, controls_for

MERCHANT = "shop-1"


def make_catalog(n: int = 40) -> Catalog:
    records = [
        {
            "product_id": f"p{i}",
            "category_id": f"c{i % 11}",
            "price": None if i % 7 == 0 else round(1.25 * i, 2),
            "popularity": 1.0 / (i + 1),
            "title": f"Tea & <cups> {i}" if i % 3 == 0 else None,
            # Bestsellers (the top 4 of 40: p9, p11, p24, p37) are not the most popular ones.
            "n_purchases": (i * 7) % 13,
        }
        for i in range(n)
    ]
    return Catalog.from_records(MERCHANT, records)


class Browserless:
    """A cookie-keeping HTTP client that performs a model action by its link or form."""

    def __init__(self, server: StorefrontServer) -> None:
        self.server = server
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path_or_url: str) -> tuple[int, str, str]:
        url = path_or_url if path_or_url.startswith("http") else self.server.url + path_or_url
        try:
            with self.opener.open(url) as r:
                return r.status, r.url, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, url, err.read().decode()

    def post(self, path: str, fields: dict[str, str]) -> tuple[int, str, str]:
        data = urlencode(fields).encode()
        try:
            with self.opener.open(self.server.url + path, data=data) as r:
                return r.status, r.url, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, path, err.read().decode()

    def session(self):
        sid = next(c.value for c in self.jar if c.name == SESSION_COOKIE)
        return self.server.shop.sessions.get(sid, MERCHANT)

    def act(self, action: str) -> int:
        """Perform a valid action the way its page control does; its status."""
        return self.perform(action)[0]

    def perform(self, action: str) -> tuple[int, str, str]:
        """Perform a valid action the way its page control does; status, URL and the page it leads to."""
        session = self.session()
        store = self.server.shop.storefronts[MERCHANT]
        controls = controls_for(MERCHANT, session, tuple(store.valid_actions(session.state)))
        query = sf.search_query(action)
        control = controls[sf.SEARCH_TEMPLATE if query is not None else action]
        if query is not None:
            return self.get(f"{control.href}?{urlencode({**dict(control.fields), 'q': query})}")
        if control.href is not None:
            return self.get(control.href)
        return self.post(control.post, dict(control.fields))


@pytest.fixture(scope="module")
def server():
    with StorefrontServer.from_catalogs(make_catalog()) as srv:
        yield srv


def test_binds_loopback_on_a_runtime_port(server):
    parts = urlsplit(server.url)
    assert parts.hostname == "127.0.0.1" and parts.port and parts.port > 0
    status, _, html = Browserless(server).get("/")
    assert status == 200 and f"/m/{MERCHANT}/" in html


def test_start_opens_a_fresh_session_with_goal(server):
    client = Browserless(server)
    status, url, html = client.get(server.start_url(MERCHANT, goal="p3"))
    assert status == 200 and urlsplit(url).path == f"/m/{MERCHANT}/"
    assert "Goal: buy product p3" in html
    assert client.session().state == Storefront(make_catalog()).initial_state(goal="p3")
    assert client.get(server.start_url(MERCHANT, goal="nope"))[0] == 400
    assert client.get("/m/unknown/")[0] == 404


def test_requests_follow_the_model_step_for_step(server):
    """A seeded random walk through links and forms leaves the server in the model's state."""
    model = Storefront(make_catalog())
    rng = random.Random(7)
    for episode in range(4):
        client = Browserless(server)
        client.get(server.start_url(MERCHANT, goal="p5" if episode % 2 else None))
        state = model.initial_state(goal="p5" if episode % 2 else None)
        for _ in range(30):
            actions = model.valid_actions(state)
            if not actions:
                break
            action = rng.choice([a for a in actions if a != sf.EXIT] or actions)
            if action == sf.SEARCH_TEMPLATE:
                action = f'search "{rng.choice(["tea", "p1", "c3", "zzz"])}"'
            state, event = model.step(state, action)
            assert client.act(action) == 200, action
            session = client.session()
            assert session.state == state, action
            if event is not None and event.event_type == "purchase":
                break


def test_reload_redraws_without_acting_and_stale_forms_are_refused(server):
    client = Browserless(server)
    client.get(server.start_url(MERCHANT))
    home = client.session()
    link = controls_for(MERCHANT, home, (sf.HOME,))[sf.HOME].href
    assert client.get(link)[0] == 200  # "home" on the home page is a real step (as in the text env)
    after = client.session().state
    assert len(after.history) == 1 and client.session().turn == 1
    assert client.get(link)[0] == 200  # the same link again carries an old turn: a reload
    assert client.session().state == after and client.session().turn == 1
    assert client.act("open product p1") == 200
    stale = client.post(f"/m/{MERCHANT}/action/add-to-cart", {"t": "0", "product_id": "p1"})
    assert stale[0] == 409 and client.session().state.cart == ()
    wrong = client.post(
        f"/m/{MERCHANT}/action/add-to-cart", {"t": str(client.session().turn), "product_id": "p2"}
    )
    assert wrong[0] == 409 and client.session().state.cart == ()


def test_pages_escape_catalog_text(server):
    client = Browserless(server)
    client.get(server.start_url(MERCHANT))
    html = client.get(f"/m/{MERCHANT}/product/p0")[2]
    assert "Tea &amp; &lt;cups&gt; 0" in html and "<cups>" not in html


@pytest.mark.parametrize(
    ("template", "cell"),
    [("default", '<span class="badge">bestseller</span>'), ("alt", '<dd class="card-tag">bestseller</dd>')],
)
def test_both_templates_draw_the_bestseller_badge(template, cell):
    with StorefrontServer.from_catalogs(make_catalog(), template=template) as srv:
        client = Browserless(srv)
        client.get(srv.start_url(MERCHANT))
        listing = client.perform('search "p"')[2]  # p0..p9: one bestseller, p9
        assert listing.count(cell) == 1 and listing.count("bestseller") == 1
        assert "Bestseller" in client.perform("open product p9")[2]
        client.perform("back")
        assert "estseller" not in client.perform("open product p8")[2]


def test_bundled_selector_mappings_load():
    for name in ("default", "alt"):
        mapping = load_selectors(name)
        assert mapping.name == name
        assert set(mapping.spec["buttons"]) == set(BUTTON_ACTIONS)  # every plain action has a control


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.replace("title:", "titel:", 1), "line {titel}, column 1: titel: unknown key"),
        (lambda t: t.replace("  favorite:", "  favourite:", 1), "buttons.favourite: unknown action"),
        (lambda t: t.replace('pattern: "(\\\\d+)"', 'pattern: "(\\\\d+"', 1), "not a valid regex"),
        (
            lambda t: "\n".join(x for x in t.splitlines() if not x.startswith("status:")),
            "missing key(s) ['status']",
        ),
    ],
)
def test_bad_selector_mapping_names_file_line_and_key(tmp_path, mutate, message):
    text = (Path(load_selectors("alt").source)).read_text(encoding="utf-8")
    bad = mutate(text)
    assert bad != text
    path = tmp_path / "site.yaml"
    path.write_text(bad, encoding="utf-8")
    titel = next((i for i, line in enumerate(bad.splitlines(), 1) if line.startswith("titel:")), 0)
    message = message.format(titel=titel)
    with pytest.raises(SelectorMappingError) as err:
        load_selectors(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_standalone_server_prints_its_url(tmp_path):
    rows = [{"merchant_id": MERCHANT, "product_id": f"p{i}", "category_id": "c", "price": 1.0, "n_views": 1,
             "n_carts": 0, "n_purchases": 0, "popularity": 0.5} for i in range(3)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "catalogs.parquet")
    cmd = [sys.executable, "-m", "envs.web.server", "--data", str(tmp_path), "--merchant", MERCHANT]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert urlsplit(url).hostname == "127.0.0.1"
        with urllib.request.urlopen(url) as r:
            assert r.status == 200 and "Shop shop-1 | Cart: 0 items" in r.read().decode()
    finally:
        proc.terminate()
        proc.wait(10)
