"""The live page at /app/ and the API's /docs, as a person sees them: Debian's chromium,
driven by Playwright, against the API and an ingest on the simulator (tests/test_api.py's
`live_api`), with every request that would leave the machine refused (the page must work
offline).

A page that throws, logs an error, loads something that fails or reaches off the machine fails
here, whichever test it is in. Screenshots (dark and light) go to build/screenshots/.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, WebSocketRoute, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from store.bars import BAR_INTERVALS
from tests.conftest import REPO, DbServer
from tests.test_api import API_KEY, client, live_api

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = REPO / "build" / "screenshots"
STREAM_MARK = "/api/v1/stream/sse"  # the stream's HTTP twin: where it is, the page pushes


@dataclass
class Watch:
    """Everything that went wrong in a page: its console errors, uncaught exceptions, failed
    or refused requests and answers of 400 and above."""

    problems: list[str] = field(default_factory=list)

    def only_this_machine(self, route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.problems.append(f"reached off the machine: {route.request.url}")
            route.abort()


@pytest.fixture(scope="module")
def site(apache_server: DbServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The universe alone: the page's table and counts are the subject, not the chains.
    with live_api(apache_server, tmp_path_factory.mktemp("page"), option_chains=()) as base:
        yield base


@pytest.fixture(scope="module")
def api(site: str) -> Iterator[httpx.Client]:
    with client(site) as http:
        yield http


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (`make test` installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@contextmanager
def opened(
    browser: Browser,
    url: str,
    color_scheme: str = "dark",
    before: Callable[[Page], None] = lambda page: None,
    expected: tuple[str, ...] = (),
) -> Iterator[Page]:
    """`url` in a fresh browser context (`before` prepares its page); fails the test on any
    problem the page had but those that hold one of the `expected` strings."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 720}, color_scheme=color_scheme
    )
    watch = Watch()
    context.route("**/*", watch.only_this_machine)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.on("console", lambda m: m.type == "error" and watch.problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda error: watch.problems.append(f"uncaught: {error}"))
    page.on("requestfailed", lambda r: watch.problems.append(f"failed: {r.url} {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and watch.problems.append(f"{r.status} {r.url}"))
    try:
        before(page)
        page.goto(url)
        yield page
        assert [p for p in watch.problems if not any(e in p for e in expected)] == []
    finally:
        context.close()


def the_page(site: str) -> str:
    # The key goes to the stream, which asks for it when TICKVAULT_API_KEY is set (live_api's is).
    return f"{site}/app/?api_key={API_KEY}"


def pushes(api: httpx.Client) -> bool:
    return STREAM_MARK in api.get("/openapi.json").json()["paths"]


def candles_shown(page: Page, symbol: str) -> None:
    """The chart shows `symbol`'s candles and its load has ended (the page has selected it)."""
    page.wait_for_function(
        "s => tickvault.chart && tickvault.chart.symbol === s && tickvault.chart.last !== null"
        " && tickvault.selected.symbol === s",
        arg=symbol,
    )


def test_the_page_shows_the_feed_and_the_latest_ticks_updating_in_place(
    site: str, api: httpx.Client, browser: Browser
) -> None:
    subscribed = len(api.get("/api/v1/websocket/subscriptions").json())
    with opened(browser, the_page(site)) as page:
        page.wait_for_function(
            "n => document.querySelectorAll('#ticks tbody tr').length >= n", arg=subscribed
        )
        assert "connected" in page.locator("#feed").inner_text()
        assert (
            page.locator("#subscriptions").inner_text() == f"{subscribed}/{subscribed} subscribed"
        )
        push = pushes(api)
        assert page.locator("#live-mode").inner_text() == (
            "live: push" if push else "live: polling 1 s"
        )

        infy = page.locator("#ticks tr[data-symbol='INFY']")
        before = infy.inner_text()
        infy.evaluate("row => { window.infyRow = row; }")
        page.wait_for_function(
            "was => document.querySelector(\"#ticks tr[data-symbol='INFY']\").innerText !== was",
            arg=before,
            timeout=1000 if push else 2000,
        )
        # In place: the same row, no second one.
        assert infy.evaluate("row => row === window.infyRow")
        assert page.locator("#ticks tbody tr").count() == subscribed


def test_the_chart_shows_candles_and_a_switch_loads_the_history_the_bars_route_gives(
    site: str, api: httpx.Client, browser: Browser
) -> None:
    with opened(browser, the_page(site)) as page:
        candles_shown(page, "NIFTY")
        buttons = page.locator("#intervals button")
        assert [buttons.nth(i).get_attribute("value") for i in range(buttons.count())] == list(
            BAR_INTERVALS
        ), "the page offers the bars route's intervals, no more, no fewer"

        page.locator("#symbol").fill("TCS")
        page.locator("#symbol").press("Enter")
        candles_shown(page, "TCS")
        page.wait_for_function("location.hash === '#TCS/1m'")
        assert_last_candle_is_the_routes(page, api, "TCS", "1m")

        page.locator("#intervals button[value='15m']").click()
        page.wait_for_function("tickvault.chart.interval.name === '15m'")
        candles_shown(page, "TCS")
        assert_last_candle_is_the_routes(page, api, "TCS", "15m")
        assert page.locator("#chart canvas").count() > 0


def assert_last_candle_is_the_routes(
    page: Page, api: httpx.Client, symbol: str, interval: str
) -> None:
    """The newest candle drawn is the newest bar the route gives: the same bucket and open (its
    high, low and close go on moving with the market), and as many candles as bars; a minute
    that turns between the two reads, or a chart still folding the stored minutes into its
    newest candle, is read again."""
    deadline = time.monotonic() + 5
    while True:
        drawn = page.evaluate(
            "({last: tickvault.chart.last, count: tickvault.chart.candles.data().length})"
        )
        bars = api.get(f"/api/v1/bars/{symbol}", params={"interval": interval}).json()["bars"]
        last = bars[-1]
        bucket = last["bucket"].replace("Z", "+00:00")
        drawn_bucket = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(drawn["last"]["time"]))
        same = drawn_bucket == bucket and drawn["last"]["open"] == last["open"]
        if same or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert drawn_bucket == bucket
    assert drawn["last"]["open"] == last["open"]
    assert drawn["count"] == len(bars)


class ProtocolServer:
    """The stream's side of docs/api.md's protocol, played by the test inside the browser
    (Playwright routes the page's sockets here), so that the page's push layer is held to the
    protocol whether or not this API has the stream yet: every socket the page opens, and
    what it sent."""

    def __init__(self, page: Page, api: httpx.Client) -> None:
        self.sockets: list[WebSocketRoute] = []
        self.sent: list[list[dict[str, object]]] = []
        page.route("**/openapi.json", lambda route: self.with_stream(route, api))
        page.route_web_socket("**/api/v1/stream*", self.accept)

    @staticmethod
    def with_stream(route: Route, api: httpx.Client) -> None:
        document = api.get("/openapi.json").json()
        document["paths"].setdefault(STREAM_MARK, {})
        route.fulfill(json=document)

    def accept(self, socket: WebSocketRoute) -> None:
        received: list[dict[str, object]] = []
        self.sockets.append(socket)
        self.sent.append(received)
        socket.on_message(lambda text: received.append(json.loads(text)))

    def subscriber(self, page: Page, symbols: object, after: int = 0) -> WebSocketRoute:
        """The socket (the `after`th opened or a later one) whose first message subscribed
        `symbols`, within 5 seconds."""
        for _ in range(50):
            for socket, messages in zip(self.sockets[after:], self.sent[after:], strict=True):
                if messages and messages[0].get("symbols") == symbols:
                    return socket
            page.wait_for_timeout(100)
        raise AssertionError(f"no subscribe of {symbols}: {self.sent}")

    def last_sent(self, page: Page, socket: WebSocketRoute, count: int) -> list[dict[str, object]]:
        """The last `count` messages `socket` sent once it has sent more than `count`, within 5
        seconds: the page moves a socket only after the new chart's history has loaded, and
        the messages cross from the browser after that."""
        received = self.sent[self.sockets.index(socket)]
        for _ in range(50):
            if len(received) > count:
                break
            page.wait_for_timeout(100)
        return received[-count:]


def test_the_page_speaks_the_stream_protocol(
    site: str, api: httpx.Client, browser: Browser
) -> None:
    server: list[ProtocolServer] = []
    with opened(
        browser, the_page(site), before=lambda page: server.append(ProtocolServer(page, api))
    ) as page:
        [stream] = server
        table = stream.subscriber(page, "universe")
        chart = stream.subscriber(page, ["NIFTY"])
        assert f"api_key={API_KEY}" in table.url
        assert stream.sent[stream.sockets.index(table)][0] == {
            "action": "subscribe",
            "symbols": "universe",
            "ticks_ms": 500,
            "bars": False,
            "batch": True,
        }
        assert stream.sent[stream.sockets.index(chart)][0]["bars"] is True
        page.wait_for_function("document.querySelector('#live-mode').innerText === 'live: push'")

        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        minute = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(now))
        tick = {"symbol": "INFY", "ts": stamp, "ltp": 1234.5, "cp": 1200.0, "vtt": 10}
        table.send(json.dumps({"type": "snapshot", "ticks": [tick], "bars": []}))
        page.wait_for_function(
            "document.querySelector(\"#ticks tr[data-symbol='INFY'] td:nth-child(2)\")"
            "?.innerText === '1,234.50'"
        )
        table.send(json.dumps({**tick, "type": "tick", "ltp": 1240.0}))
        page.wait_for_function(
            "document.querySelector(\"#ticks tr[data-symbol='INFY'] td:nth-child(2)\")"
            ".innerText === '1,240.00'"
        )
        changed = {**tick, "type": "tick", "ltp": 1250.0}
        table.send(json.dumps({"type": "changes", "ticks": [changed], "bars": []}))
        page.wait_for_function(
            "document.querySelector(\"#ticks tr[data-symbol='INFY'] td:nth-child(2)\")"
            ".innerText === '1,250.00'"
        )
        table.send(
            json.dumps({"type": "heartbeat", "ts": stamp, "market": "closed", "feed": "connected"})
        )
        page.wait_for_function("document.querySelector('#market').innerText === 'market closed'")

        bar = {
            "type": "bar",
            "symbol": "NIFTY",
            "interval": "1m",
            "bucket": minute,
            "open": 1.0,
            "high": 3.0,
            "low": 0.5,
            "close": 2.0,
            "volume": 7,
            "tick_count": 3,
            "final": False,
        }
        chart.send(json.dumps(bar))
        page.wait_for_function("tickvault.chart.last && tickvault.chart.last.close === 2")
        assert page.evaluate("tickvault.chart.last") == {
            "time": int(now // 60 * 60),
            "open": 1,
            "high": 3,
            "low": 0.5,
            "close": 2,
            "volume": 7,
        }

        # Fell behind: the page subscribes again at once, on a new socket.
        before = len(stream.sockets)
        table.close(code=4000, reason="queue full")
        assert stream.subscriber(page, "universe", after=before) is not table

        # Another symbol in 1h: the chart's socket moves, and 1m bars fold into hourly candles.
        page.locator("#symbol").fill("TCS")
        page.locator("#symbol").press("Enter")
        page.locator("#intervals button[value='1h']").click()
        switched = "tickvault.chart.symbol === 'TCS' && tickvault.chart.interval.name === '1h'"
        try:  # two history loads from the database: slow on a busy machine
            page.wait_for_function(switched, timeout=30_000)
        except PlaywrightTimeout:
            note = page.locator("#chart-note").inner_text()
            state = page.evaluate("[tickvault.chart.symbol, tickvault.chart.interval.name]")
            raise AssertionError(f"the chart did not switch: {state}, note {note!r}") from None
        assert stream.last_sent(page, chart, 2) == [
            {"action": "unsubscribe", "symbols": ["NIFTY"]},
            {
                "action": "subscribe",
                "symbols": ["TCS"],
                "ticks_ms": 250,
                "bars": True,
                "batch": True,
            },
        ]
        # The next hour of the session grid (09:15-10:15 IST, ...: from 03:45 UTC).
        bucket = int(now - (now - (3 * 3600 + 45 * 60)) % 3600 + 3600)
        for offset, values in (
            (60, (10, 12, 9, 11, 5)),
            (0, (8, 9, 7, 10, 4)),
            (60, (10, 14, 9, 13, 6)),
        ):
            chart.send(json.dumps(one_minute("TCS", bucket + offset, *values)))
        expected = {"time": bucket, "open": 8, "high": 14, "low": 7, "close": 13, "volume": 10}
        page.wait_for_function(
            "c => JSON.stringify(tickvault.chart.last) === c",
            arg=json.dumps(expected, separators=(",", ":")),
        )


def one_minute(symbol: str, minute: float, *values: float) -> dict[str, object]:
    """A bar message of the stream: `values` are open, high, low, close and volume."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(minute))
    ohlcv = dict(zip(("open", "high", "low", "close", "volume"), values, strict=True))
    return {
        "type": "bar",
        "symbol": symbol,
        "interval": "1m",
        "bucket": stamp,
        **ohlcv,
        "tick_count": 1,
        "final": False,
    }


def test_an_unknown_symbol_is_named_and_the_chart_stays(
    site: str, api: httpx.Client, browser: Browser
) -> None:
    unknown = "NOSUCHSYMBOL"
    # The bars route's 404 is the browser's to log; nothing else may go wrong.
    answer = api.get(f"/api/v1/bars/{unknown}")
    expected = (f"404 {site}/api/v1/bars/{unknown}", "status of 404 (Not Found)")
    with opened(browser, the_page(site), expected=expected) as page:
        candles_shown(page, "NIFTY")
        page.locator("#symbol").fill(unknown)
        page.locator("#symbol").press("Enter")
        try:
            page.wait_for_function(
                "n => document.querySelector('#chart-note').innerText.startsWith(n + ':')",
                arg=unknown,
            )
        except PlaywrightTimeout:
            note = page.locator("#chart-note").inner_text()
            state = page.evaluate("[tickvault.chart.symbol, tickvault.selected.symbol]")
            raise AssertionError(f"no note naming {unknown}: {note!r}, {state}") from None
        assert answer.json()["detail"] in page.locator("#chart-note").inner_text()
        assert page.locator("#symbol").input_value() == "NIFTY"
        assert page.evaluate("tickvault.selected.symbol") == "NIFTY"
        assert page.evaluate("tickvault.chart.symbol") == "NIFTY"


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_the_page_follows_the_system_theme_and_its_toggle(
    site: str, browser: Browser, scheme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    other = {"dark": "light", "light": "dark"}[scheme]
    with opened(browser, the_page(site), color_scheme=scheme) as page:
        candles_shown(page, "NIFTY")
        page.wait_for_function("document.querySelectorAll('#ticks tbody tr').length > 0")
        assert page.evaluate("document.documentElement.dataset.theme") == scheme
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        dark_background = background == "rgb(13, 17, 23)"
        assert dark_background == (scheme == "dark"), background
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / f"page-{scheme}.png"
        page.screenshot(path=shot)
        with capsys.disabled():
            print(f"\nscreenshot of the page ({scheme}): {shot}")

        page.locator("#theme").click()
        assert page.evaluate("document.documentElement.dataset.theme") == other
        page.reload()
        candles_shown(page, "NIFTY")
        assert page.evaluate("document.documentElement.dataset.theme") == other, "kept"


def test_docs_render_every_operation_offline(
    site: str, api: httpx.Client, browser: Browser
) -> None:
    """Swagger UI from the fastapi-offline package: with nothing reachable off the machine, the
    page still draws a block for each operation of the OpenAPI document."""
    operations = sum(len(path) for path in api.get("/openapi.json").json()["paths"].values())
    with opened(browser, f"{site}/docs") as page:
        page.wait_for_selector(".opblock")
        assert page.locator(".opblock").count() == operations > 0


def test_the_root_sends_a_browser_to_the_page(site: str, api: httpx.Client) -> None:
    answer = api.get("/")
    assert answer.status_code == 307
    assert answer.headers["location"] == "/app/"
    page = api.get("/app/")
    assert page.status_code == 200
    assert '<script type="module" src="app.js">' in page.text


def test_the_chart_library_is_served_from_the_api(api: httpx.Client) -> None:
    answer = api.get("/app/vendor/lightweight-charts.standalone.production.mjs")
    assert answer.status_code == 200, "run `make setup`: npm installs the page's chart library"
    assert "createChart" in answer.text


def test_signals_are_markers_on_their_candles(
    site: str, api: httpx.Client, browser: Browser
) -> None:
    """The signals route's answer (here one made up for the newest candle: the simulator's
    ingest runs no signal handler) becomes a marker on that candle: up for a buy."""

    def signals(route: Route) -> None:
        assert "symbol=NIFTY" in route.request.url
        bars = api.get("/api/v1/bars/NIFTY", params={"interval": "1m"}).json()["bars"]
        ts = bars[-1]["bucket"].replace("Z", "+00:00")
        made_up = {
            **{"ts": ts, "symbol": "NIFTY", "instrument_key": "NSE_INDEX|Nifty 50"},
            **{"name": "pcr_high", "value": 1.31, "side": "buy", "fields": {}},
            "handler": "Pcr.handle_tick",
        }
        route.fulfill(json={"symbol": "NIFTY", "instrument_key": None, "signals": [made_up]})

    with opened(
        browser, the_page(site), before=lambda page: page.route("**/api/v1/signals*", signals)
    ) as page:
        candles_shown(page, "NIFTY")
        page.wait_for_function("tickvault.chart.markers.markers().length === 1")
        marker, last = page.evaluate("[tickvault.chart.markers.markers()[0], tickvault.chart.last]")
        assert marker["text"] == "pcr_high"
        assert marker["shape"] == "arrowUp"
        assert marker["position"] == "belowBar"
        assert marker["time"] == last["time"] + 19800, "on its candle, in IST as the candles"
