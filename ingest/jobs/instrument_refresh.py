"""Refresh the instrument master from Upstox's daily file, and make the feed follow the F&O
universe it defines, without a restart.

`refresh_instruments(target, settings)` downloads the file (httpx, streamed to a temporary
file, capped), checks it whole with the same reader as `tickvault instruments load`, refreshes
the master in one transaction (store/instrument_refresh.py) and reports what changed. Given
the running feed's subscriptions, it also subscribes the stocks that joined the universe and
unsubscribes the ones that left; without them (no ingest runs), the subscriptions table alone
records the change, and the next ingest resumes it. A download that fails, is
truncated or does not parse changes nothing, and the error says why; so does a valid file that
would take out more of the live master or of the F&O universe than
TICKVAULT_INSTRUMENTS_MAX_REMOVED_SHARE allows (an empty `[]` one bad morning), unless forced.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg

from core.config import Settings, variable
from core.upstox_wire import INSTRUMENTS_HOST, INSTRUMENTS_PATH
from ingest.client import SubscriptionLimitError
from ingest.client.authorize import is_loopback, require_tls
from ingest.subscriptions import SubscriptionManager
from store.instrument_refresh import LEFT_UNIVERSE, MasterChange, RefreshRefused, refresh_master
from store.instruments import InstrumentFileError, max_bytes_setting, read_instruments
from store.instruments import trading_symbols as symbols_of

CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 120.0  # between two chunks of the download, not for all of it


def instruments_url(settings: Settings, simulator_url: str | None = None) -> str:
    """TICKVAULT_INSTRUMENTS_URL, else the simulator's master when the ingest runs on it, else
    Upstox's."""
    if settings.instruments_url:
        return settings.instruments_url
    return (simulator_url or INSTRUMENTS_HOST) + INSTRUMENTS_PATH


def download(url: str, destination: Path, max_bytes: int) -> None:
    """The file at `url`, byte for byte as served (a gzip stays gzipped), into `destination`.

    At most `max_bytes` are taken: the same limit as the unpacked JSON, which a gzipped file
    is far below. Plain http only for loopback (the simulator), as for the feed.
    """
    require_tls(url, "https", "http", variable("instruments_url"))
    timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    # An environment proxy has no business with the simulator on this machine.
    trust_env = not is_loopback(urlsplit(url).hostname)
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=True, trust_env=trust_env) as http,
            http.stream("GET", url) as response,
        ):
            if response.status_code != httpx.codes.OK:
                raise InstrumentFileError(
                    f"cannot download {url}: HTTP {response.status_code}"
                    f" {response.reason_phrase}; nothing was changed"
                )
            taken = 0
            with destination.open("wb") as out:
                for chunk in response.iter_raw():
                    taken += len(chunk)
                    if taken > max_bytes:
                        raise InstrumentFileError(
                            f"{url} is over the {max_bytes}-byte limit for an instrument file;"
                            " nothing was changed"
                        )
                    out.write(chunk)
    except httpx.HTTPError as error:
        raise InstrumentFileError(
            f"cannot download {url}: {type(error).__name__}: {error}; nothing was changed"
        ) from None


@dataclass(frozen=True)
class RefreshReport:
    """What a refresh changed (`change`), and what the feed did about it.

    `followed_by` is "ingest" when the running ingest changed its subscriptions, "table" when
    no ingest ran and only the subscriptions table was changed (`subscribed` are then the
    keys recorded pending, which the next ingest subscribes). `subscription_error` says why
    the feed could not take the stocks that joined (its key limits), if so.
    """

    url: str
    change: MasterChange
    symbols: dict[str, str]  # NSE_EQ key -> trading symbol, for the universe's lists
    followed_by: str
    subscribed: list[str] = field(default_factory=list)
    unsubscribed: list[str] = field(default_factory=list)
    subscription_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        change = asdict(self.change)
        named = {
            name: [
                {"symbol": self.symbols.get(key, key), "instrument_key": key}
                for key in change.pop(f"universe_{name}")
            ]
            for name in ("added", "removed")
        }
        del change["to_subscribe"], change["to_unsubscribe"]
        return {
            "url": self.url,
            **change,
            "universe": {"size": change.pop("universe_size"), **named},
            "subscriptions": {
                "followed_by": self.followed_by,
                "subscribed": self.subscribed,
                "unsubscribed": self.unsubscribed,
                "error": self.subscription_error,
            },
        }

    def lines(self) -> list[str]:
        """The report for people, a few lines."""
        return report_lines(self.as_dict())


def report_lines(report: dict[str, Any]) -> list[str]:
    """A report's JSON (`RefreshReport.as_dict`, as the ingest's control socket sends it) for
    people, a few lines."""
    universe, subscriptions = report["universe"], report["subscriptions"]

    def named(entries: list[dict[str, str]]) -> str:
        return ", ".join(f"{e['symbol']} ({e['instrument_key']})" for e in entries) or "none"

    lines = [
        f"refreshed the instrument master from {report['url']}: {report['instruments']}"
        f" instruments; {report['added']} added, {report['changed']} changed,"
        f" {report['reactivated']} live again, {report['expired']} expired,"
        f" {report['removed']} removed (kept, inactive)",
        f"F&O universe: {universe['size']} stocks; joined: {named(universe['added'])};"
        f" left: {named(universe['removed'])}",
    ]
    subscribed, unsubscribed = subscriptions["subscribed"], subscriptions["unsubscribed"]
    if subscriptions["followed_by"] == "ingest":
        lines.append(
            f"the running ingest subscribed {len(subscribed)} and unsubscribed {len(unsubscribed)}"
        )
    else:
        lines.append(
            f"no ingest runs: the subscriptions table has {len(subscribed)} to subscribe and"
            f" {len(unsubscribed)} unsubscribed, for the next start"
        )
    if subscriptions["error"]:
        lines.append(f"the feed could not take the stocks that joined: {subscriptions['error']}")
    return lines


async def refresh_instruments(
    database_url: str,
    settings: Settings,
    *,
    subscriptions: SubscriptionManager | None = None,
    simulator_url: str | None = None,
    url: str | None = None,
    max_bytes: int | None = None,
    force: bool = False,
) -> RefreshReport:
    """Refresh the master from `url` (default: `instruments_url`); see the module docstring.

    `subscriptions` are the running feed's, which then follows the universe; None when no
    ingest runs. `simulator_url` is the feed's simulator, whose master is the default source
    while the ingest runs on it. `max_bytes` bounds the download and its unpacked JSON
    (default: TICKVAULT_INSTRUMENTS_MAX_BYTES); `force` takes a file however much it removes.
    InstrumentFileError when nothing could be changed.
    """
    source = url or instruments_url(settings, simulator_url)
    limit = max_bytes_setting() if max_bytes is None else max_bytes
    share = None if force else settings.instruments_max_removed_share
    change, symbols = await asyncio.to_thread(
        _download_and_refresh, source, database_url, limit, settings.feed_mode, share
    )
    if subscriptions is None:
        return RefreshReport(
            source,
            change,
            symbols,
            followed_by="table",
            subscribed=change.to_subscribe,
            unsubscribed=change.to_unsubscribe,
        )
    report = RefreshReport(source, change, symbols, followed_by="ingest")
    if change.to_unsubscribe:
        await subscriptions.unsubscribe_keys(change.to_unsubscribe, reason=LEFT_UNIVERSE)
        report.unsubscribed.extend(change.to_unsubscribe)
    if change.to_subscribe:
        try:
            await subscriptions.subscribe_keys(change.to_subscribe, settings.feed_mode)
        except SubscriptionLimitError as error:  # recorded `failed` in the table too
            return replace(report, subscription_error=str(error))
        report.subscribed.extend(change.to_subscribe)
    return report


def _download_and_refresh(
    url: str, database_url: str, max_bytes: int, feed_mode: str, max_removed_share: float | None
) -> tuple[MasterChange, dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="tickvault-instruments-") as directory:
        path = Path(directory) / "complete.json.gz"
        download(url, path, max_bytes)
        try:
            records = read_instruments(path, max_bytes)
        except InstrumentFileError as error:
            # The reader names the temporary file; the user knows the download by its URL.
            raise InstrumentFileError(
                f"{str(error).replace(str(path), url)}; nothing was changed"
            ) from None
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        try:
            change = refresh_master(conn, records, url, feed_mode, max_removed_share)
        except RefreshRefused as error:
            raise RefreshRefused(
                f"{url}: {error} ({variable('instruments_max_removed_share')}); nothing was"
                " changed. If the file is right, `tickvault instruments refresh --force`"
                " takes it"
            ) from None
        symbols = symbols_of(conn, [*change.universe_added, *change.universe_removed])
    return change, symbols
