"""Replay real sessions through the storefront: the agent's training traces (observation -> action).

Each session of a merchant starts on that merchant's home page with an empty cart and is replayed
event by event (``seq`` order). A real event becomes the action that emits it on the current page;
when that action is not on the page (a product view of an item not on screen, a purchase without a
cart event), the navigation the storefront needs is inserted first, as steps with
``real_event = False``:

- product events (view, favorite, add/remove, buy): reach the product page by the cheapest of
  ``back`` (the previous page lists it), ``home`` (a featured product), its category listing
  (``open category`` + ``next page``s), or ``search "<product id>"`` (the exact id is listed first);
- a purchase buys through the checkout already open, else the cart when it holds exactly that
  product, else ``buy now`` on the product page (Tmall's purchases without a cart event);
- a checkout goes through the cart when it holds something, else ``buy now``;
- a remove_from_cart of a product the replayed cart does not hold (added before the log's window
  or session began) first adds it on its product page: the cut-off ``add to cart`` is inserted
  (``real_event = False``) and counted in the report's ``inserted_adds``.

A real event that no action can express is counted under a reason and skipped (never silently).
Each session ends with an inserted ``exit``. Product-less events (tmall-brand) use the placeholder
product of their category (see envs/catalog.py).

A session sees the prices its events logged: from an event whose price differs from the
catalogue's (its regular price, learners/data/catalogs.py), that product's page, cart and checkout show it, as a markdown
(``Price: 69.99 (was 99.99)``) when it is lower (envs/render.py).

Traces table: ``merchant_id, buyer_id, session_id, step, observation, action, valid`` plus
``real_event`` (the step is a real event, not inserted navigation), ``event_type`` (the canonical
event the step emitted; null for ``exit``), ``seq`` (the real event's ``seq``; null when inserted)
and ``page`` (the page kind observed). ``valid`` is always true for replayed steps; the column is
shared with simulated rollouts.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from envs.catalog import Catalog, Product, load_catalogs
from envs.render import shown_price
from envs.storefront import (
    BACK,
    HOME,
    HOME_CATEGORIES,
    MAX_QUERY_CHARS,
    PAGE_SIZE,
    InvalidAction,
    SessionState,
    Storefront,
)
from learners.data import schema

TRACES_FILE = "traces.parquet"
REPORT_FILE = "replay_report.json"
TRACES = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("observation", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("valid", pa.bool_(), nullable=False),
        pa.field("real_event", pa.bool_(), nullable=False),
        pa.field("event_type", pa.string()),
        pa.field("seq", pa.int32()),
        pa.field("page", pa.string(), nullable=False),
    ]
)
EVENT_COLUMNS = (
    "merchant_id",
    "buyer_id",
    "session_id",
    "seq",
    "event_type",
    "product_id",
    "category_id",
    "query",
    "price",
)
FLUSH_ROWS = 50_000


@dataclass
class TracesConfig:
    """How real sessions are replayed into traces."""

    merchants: list[str] | None = None
    """Replay only these merchants (default: all)."""
    max_sessions: int | None = None
    """At most this many sessions per merchant (the first by buyer id, then session id); default: every
    session. To size an agent's training, replay every session and give train-agent a token budget
    (``--max-tokens``: a seeded, merchant-stratified sample of whole sessions) instead."""


@dataclass
class ReplayReport:
    """How well real events mapped onto storefront actions."""

    merchants: int = 0
    sessions: int = 0
    real_events: int = 0
    mapped_events: int = 0
    steps: int = 0
    inserted_steps: int = 0
    inserted_adds: int = 0
    """Inserted ``add to cart`` steps: removals of products the replayed window never added."""
    unmapped_by_reason: dict[str, int] = field(default_factory=dict)
    by_event_type: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per real event type: ``{"real": n, "mapped": m}``."""
    seconds: float = 0.0

    @property
    def mapped_share(self) -> float:
        return self.mapped_events / self.real_events if self.real_events else 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "mapped_share": self.mapped_share}

    def lines(self) -> list[str]:
        lines = [
            f"replayed {self.sessions:,} sessions of {self.merchants:,} merchants in {self.seconds:.1f} s",
            f"  real events mapped {self.mapped_events:,} / {self.real_events:,} ({self.mapped_share:.2%});"
            f" steps {self.steps:,} ({self.inserted_steps:,} inserted navigation/exit)",
        ]
        if self.inserted_adds:
            lines.append(
                f"  {self.inserted_adds:,} remove_from_cart of products added before the window:"
                " replayed after an inserted add-to-cart"
            )
        for etype, c in sorted(self.by_event_type.items()):
            lines.append(f"    {etype:<18} {c['mapped']:>9,} / {c['real']:,}")
        if self.unmapped_by_reason:
            lines.append("  not mapped:")
            lines += [
                f"    {n:>9,}  {reason}"
                for reason, n in sorted(self.unmapped_by_reason.items(), key=lambda x: -x[1])
            ]
        return lines


@dataclass(frozen=True, slots=True)
class RealEvent:
    seq: int
    event_type: str
    product_id: str | None
    category_id: str | None
    query: str | None
    price: float | None = None


# ---- planning: the actions that express one real event on the current page ------------------------


def _route_to_product(sf: Storefront, state: SessionState, p: Product) -> list[str]:
    """Navigation after which ``open product P`` is on the page (cheapest; ties in listed order)."""
    target = "open product " + p.product_id
    actions = sf.valid_actions(state)
    if target in actions:
        return []
    routes: list[list[str]] = []
    if state.history and BACK in actions:
        prev = state.history[-1]
        shown = sf.cart_page(SessionState(prev, cart=state.cart)) if prev.kind == "cart" else ()
        if p in sf.listing(prev) or any(pid == p.product_id for pid, _ in shown):
            routes.append([BACK])
    if p in sf.listing(sf.initial_state().page):
        routes.append([HOME])
    cat_index = sf.catalog.categories.index(p.category_id)
    to_listing = ["next page"] * (sf.catalog.listing(p.category_id).index(p) // PAGE_SIZE)
    if "open category " + p.category_id in actions:
        routes.append(["open category " + p.category_id, *to_listing])
    else:
        routes.append(
            [
                HOME,
                *["next page"] * (cat_index // HOME_CATEGORIES),
                "open category " + p.category_id,
                *to_listing,
            ]
        )
    search = f'search "{p.product_id}"'
    routes.append([search] if state.page.kind != "checkout" else [BACK if state.history else HOME, search])
    return min(routes, key=len)


def _to_product_page(sf: Storefront, state: SessionState, p: Product) -> list[str]:
    if state.page.kind == "product" and state.page.arg == p.product_id:
        return []
    return [*_route_to_product(sf, state, p), "open product " + p.product_id]


def plan_event(sf: Storefront, state: SessionState, ev: RealEvent) -> tuple[list[str], str | None]:
    """(actions, None): the actions whose last one is the real event; or ([], reason) when unmappable."""
    etype = ev.event_type
    if etype in ("product_view", "add_to_cart", "remove_from_cart", "favorite", "purchase"):
        p = sf.catalog.product_for(ev.product_id, ev.category_id)
        if p is None:
            if etype == "purchase" and ev.product_id is None and state.page.kind == "checkout":
                return ["place order"], None
            if etype == "purchase" and ev.product_id is None and state.cart:
                return _via_cart(state), None
            return [], f"{etype} of a product that is not in the merchant's catalog (or has no id)"
        if etype == "product_view":
            if state.page.kind == "product" and state.page.arg == p.product_id:
                route = _route_to_product(sf, state, p)  # a repeat view: leave and come back
                return [*route, "open product " + p.product_id], None
            return _to_product_page(sf, state, p), None
        if etype == "remove_from_cart":
            if not state.in_cart(p.product_id):
                # The add happened before the window (or session) began: put it back, so the real
                # removal is replayed rather than dropped (the caller counts the inserted add).
                return [*_to_product_page(sf, state, p), "add to cart", "remove from cart"], None
            if state.page.kind == "product" and state.page.arg == p.product_id:
                return ["remove from cart"], None
            return _to_cart_line(sf, state, p.product_id, "remove product " + p.product_id), None
        if etype == "purchase":
            return _purchase(sf, state, p), None
        action = "add to cart" if etype == "add_to_cart" else "favorite"
        return [*_to_product_page(sf, state, p), action], None
    if etype == "checkout":
        if state.page.kind == "checkout":
            return [], "checkout while already on the checkout page"
        if state.cart:
            return _via_cart(state)[:-1], None
        p = sf.catalog.product_for(ev.product_id, ev.category_id)
        if p is None and state.page.kind == "product":
            p = sf.catalog.by_id[state.page.arg or ""]
        if p is None:
            return [], "checkout with an empty cart and no product"
        return [*_to_product_page(sf, state, p), "buy now"], None
    if etype == "search":
        q = " ".join((ev.query or "").replace('"', "'").split())[:MAX_QUERY_CHARS]
        if not q:
            return [], "search without a query"
        prefix = [BACK if state.history else HOME] if state.page.kind == "checkout" else []
        return [*prefix, f'search "{q}"'], None
    if etype == "page_view":
        if ev.category_id is not None and ev.category_id in sf.catalog.by_category:
            action = "open category " + ev.category_id
            return [action] if action in sf.valid_actions(state) else _category_from_home(
                sf, ev.category_id
            ), None
        return [HOME], None
    return [], f"unknown event type {etype!r}"


def _category_from_home(sf: Storefront, category_id: str) -> list[str]:
    pages = sf.catalog.categories.index(category_id) // HOME_CATEGORIES
    return [HOME, *["next page"] * pages, "open category " + category_id]


def _via_cart(state: SessionState) -> list[str]:
    head = [] if state.page.kind == "cart" else ["go to cart"]
    return [*head, "checkout", "place order"]


def _to_cart_line(sf: Storefront, state: SessionState, pid: str, action: str) -> list[str]:
    line = next(i for i, (item, _) in enumerate(state.cart) if item == pid)
    on_page = state.page.kind == "cart" and action in sf.valid_actions(state)
    return [action] if on_page else ["go to cart", *["next page"] * (line // PAGE_SIZE), action]


def _purchase(sf: Storefront, state: SessionState, p: Product) -> list[str]:
    if state.page.kind == "checkout" and tuple(i for i, _ in sf.checkout_items(state)) == (p.product_id,):
        return ["place order"]
    if tuple(i for i, _ in state.cart) == (p.product_id,) and state.page.kind != "checkout":
        return _via_cart(state)
    return [*_to_product_page(sf, state, p), "buy now", "place order"]


# ---- replay ----------------------------------------------------------------------------------------


@dataclass
class TraceRows:
    """Column buffers of the traces table."""

    columns: dict[str, list] = field(default_factory=lambda: {f.name: [] for f in TRACES})

    def __len__(self) -> int:
        return len(self.columns["step"])

    def table(self) -> pa.Table:
        return pa.Table.from_pydict(self.columns, schema=TRACES)


def replay_session(
    sf: Storefront,
    key: tuple[str, str, str],
    events: Sequence[RealEvent],
    rows: TraceRows,
    report: ReplayReport,
) -> None:
    """Replay one session into ``rows`` and count its events in ``report``."""
    state = sf.initial_state()
    step = 0

    def run(state: SessionState, plan: list[str], real: RealEvent | None) -> tuple[SessionState, list[tuple]]:
        """Step through a plan (the last action is ``real``); rows are kept only if all of it is valid."""
        out = []
        for i, action in enumerate(plan):
            actions = sf.valid_actions(state)
            obs = sf.observe(state, actions)
            new, event = sf.step(state, action, actions)
            is_real = real is not None and i == len(plan) - 1
            out.append(
                (
                    obs,
                    action,
                    is_real,
                    None if event is None else event.event_type,
                    real.seq if is_real else None,
                    state.page.kind,
                )  # type: ignore[union-attr]
            )
            state = new
        return state, out

    def commit(steps: list[tuple]) -> None:
        nonlocal step
        cols = rows.columns
        for obs, action, is_real, event_type, seq, page in steps:
            # Only a removal of an item the window never added inserts an add-to-cart (plan_event).
            report.inserted_adds += int(not is_real and event_type == "add_to_cart")
            cols["merchant_id"].append(key[0])
            cols["buyer_id"].append(key[1])
            cols["session_id"].append(key[2])
            cols["step"].append(step)
            cols["observation"].append(obs)
            cols["action"].append(action)
            cols["valid"].append(True)
            cols["real_event"].append(is_real)
            cols["event_type"].append(event_type)
            cols["seq"].append(seq)
            cols["page"].append(page)
            step += 1

    for ev in events:
        product = sf.catalog.by_id.get(ev.product_id) if ev.product_id is not None else None
        if product is not None and ev.price is not None and shown_price(product, state)[0] != ev.price:
            state = state.priced(product.product_id, ev.price)  # the price this visit saw from here on
        counts = report.by_event_type.setdefault(ev.event_type, {"real": 0, "mapped": 0})
        counts["real"] += 1
        report.real_events += 1
        plan, reason = plan_event(sf, state, ev)
        if reason is None:
            try:
                new, steps = run(state, plan, ev)
            except InvalidAction as err:
                reason = f"no route on the {state.page.kind} page ({err})"
        if reason is not None:
            report.unmapped_by_reason[reason] = report.unmapped_by_reason.get(reason, 0) + 1
            continue
        state = new
        commit(steps)
        counts["mapped"] += 1
        report.mapped_events += 1
    commit(run(state, ["exit"], None)[1])
    report.sessions += 1


def _sessions(events: pa.Table) -> Iterator[tuple[tuple[str, str, str], list[RealEvent]]]:
    """Sessions of a merchant-sorted events table, events in ``seq`` order."""
    cols = {name: events.column(name).to_pylist() for name in EVENT_COLUMNS}
    key: tuple[str, str, str] | None = None
    batch: list[RealEvent] = []
    for i in range(events.num_rows):
        k = (cols["merchant_id"][i], cols["buyer_id"][i], cols["session_id"][i])
        if k != key:
            if batch:
                yield key, batch  # type: ignore[misc]
            key, batch = k, []
        batch.append(
            RealEvent(
                cols["seq"][i],
                cols["event_type"][i],
                cols["product_id"][i],
                cols["category_id"][i],
                cols["query"][i],
                cols["price"][i],
            )
        )
    if batch:
        yield key, batch  # type: ignore[misc]


def read_events(data_dir: Path, merchants: Sequence[str] | None) -> pa.Table:
    """The events to replay, sorted by merchant, buyer, session and seq (a source's sessions may
    interleave in a buyer's seq order, so the session id sorts before seq)."""
    path = data_dir / schema.TABLE_FILES["events"]
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no events table; run `simpersona prepare ... --out {data_dir}` first"
        )
    filters = [("merchant_id", "in", list(merchants))] if merchants else None
    table = pq.read_table(path, columns=list(EVENT_COLUMNS), filters=filters)
    order = pc.sort_indices(
        table, [(k, "ascending") for k in ("merchant_id", "buyer_id", "session_id", "seq")]
    )
    return table.take(order)


def build_traces(data_dir: str | Path, out: str | Path, config: TracesConfig) -> ReplayReport:
    """Replay the prepared directory's sessions; write traces.parquet, replay_report.json, manifest.json."""
    start = time.perf_counter()
    data_dir, out = Path(data_dir), Path(out)
    events = read_events(data_dir, config.merchants)
    merchants = sorted(set(events.column("merchant_id").to_pylist()))
    catalogs: dict[str, Catalog] = load_catalogs(data_dir, merchants) if merchants else {}
    out.mkdir(parents=True, exist_ok=True)
    report = ReplayReport(merchants=len(merchants))
    rows = TraceRows()
    per_merchant: Counter[str] = Counter()
    storefronts: dict[str, Storefront] = {}
    with pq.ParquetWriter(out / TRACES_FILE, TRACES, compression="zstd") as writer:
        for key, session in _sessions(events):
            merchant = key[0]
            if config.max_sessions is not None and per_merchant[merchant] >= config.max_sessions:
                continue
            per_merchant[merchant] += 1
            if merchant not in storefronts:
                storefronts[merchant] = Storefront(catalogs[merchant])
            sf = storefronts[merchant]
            replay_session(sf, key, session, rows, report)
            if len(rows) >= FLUSH_ROWS:
                writer.write_table(rows.table())
                report.steps += len(rows)
                report.inserted_steps += len(rows) - sum(rows.columns["real_event"])
                rows = TraceRows()
        writer.write_table(rows.table())
        report.steps += len(rows)
        report.inserted_steps += len(rows) - sum(rows.columns["real_event"])
    report.seconds = time.perf_counter() - start
    (out / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    manifest = {
        "kind": "traces",
        "inputs": {"prepared": str(data_dir.resolve())},
        "config": asdict(config),
        "counts": {
            "sessions": report.sessions,
            "steps": report.steps,
            "real_events": report.real_events,
            "mapped_events": report.mapped_events,
            "inserted_adds": report.inserted_adds,
        },
        "files": [TRACES_FILE, REPORT_FILE],
    }
    (out / schema.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return report
