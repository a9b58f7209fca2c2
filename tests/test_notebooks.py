"""The analysis notebooks, run top to bottom against a database the real ingest filled.

The simulator plays the part of Upstox, so the ticks and bars the notebooks read went through
the same socket, decoder, writer and rollup as production data. Each notebook runs in a fresh
kernel of this virtualenv's Python, then a probe cell appended to it reports what a user
would look at first, and the test checks that.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import nbformat
import psycopg
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from core.config import Secret, Settings
from core.ist import IST
from ingest.jobs.audit import run_audit
from ingest.service import WebSocketService
from ingest.simulator import FeedSimulator
from ingest.tokens import UpstoxAccess
from store.instruments import (
    default_sample_path,
    instrument_records,
    load_instruments,
)
from tests import conftest
from tickvault import notebook

NOTEBOOKS = conftest.REPO / "notebooks"
INGEST_SECONDS = 8

# Appended to the notebook of the same name: prints one JSON line about its results.
OHLC_PROBE = """
import json
print(json.dumps({
    "bars": len(bars),
    "high_below_low": int((bars["high"] < bars["low"]).sum()),
    "body_outside_range": int(
        ((bars[["open", "close"]].max(axis=1) > bars["high"])
         | (bars[["open", "close"]].min(axis=1) < bars["low"])).sum()
    ),
    "vwap": float(vwap.iloc[-1]),
    "lowest_close": float(bars["close"].min()),
    "highest_close": float(bars["close"].max()),
    "audited": len(audit),
    "audited_clean": int(clean.sum()),
}))
"""

TICK_PROBE = """
import json
print(json.dumps({
    "ticks": len(ticks),
    "symbols": len(rates),
    "quoted": len(quoted),
    "crossed_quotes": int((spread < 0).sum()),
    "latency_ms": latency.tolist(),
}))
"""

UNIVERSE_PROBE = """
import json
from tickvault.notebook import query
print(json.dumps({
    "universe": len(universe),
    "traded": len(traded),
    "return_columns": sorted(returns.columns),
    "corr_shape": list(corr.shape),
    "corr_symmetric": bool(np.allclose(corr, corr.T, equal_nan=True)),
    "changes": len(change),
    "movers_sorted": bool(movers.is_monotonic_decreasing and losers.is_monotonic_increasing),
    "breadth": [advancers, decliners, unchanged],
    "breadth_line_bounded": bool((line.abs() <= len(traded)).all()),
    "daily_ticks": int(daily.ticks.sum()),
    "stored_ticks": int(query("SELECT count(*) AS n FROM ticks").n[0]),
    "daily_keys": sorted(daily.instrument_key.unique()),
    "traded_keys": sorted(universe.values()),
}))
"""

OPTION_PROBE = """
import json
print(json.dumps({
    "strikes": [float(strike) for strike in chain.index],
    "calls_priced": int(chain["call_ltp"].notna().sum()),
    "puts_with_iv": int(chain["put_iv"].notna().sum()),
    "atm": chain.attrs["atm_strike"],
    "pcr": chain.attrs["pcr"],
    "max_pain": chain.attrs["max_pain"],
    "smiles": len(smiles),
    "pcr_minutes": int(pcr.notna().sum()),
    "pain_in_strikes": bool(pain.dropna().isin(chain.index).all()),
}))
"""


def check_ohlc(result: dict) -> None:
    assert result["bars"] > 0
    assert result["high_below_low"] == 0
    assert result["body_outside_range"] == 0
    # A volume-weighted mean of closes lies between the lowest and the highest close.
    # A weighted mean of closes lies between them, up to float rounding.
    slack = 1e-9 * result["highest_close"]
    assert result["lowest_close"] - slack <= result["vwap"] <= result["highest_close"] + slack
    # The fixture audited the day against the simulator's candles of the same ticks.
    assert result["audited"] > 1
    assert result["audited_clean"] == result["audited"]


def check_ticks(result: dict) -> None:
    assert result["ticks"] > 0
    assert result["symbols"] > 1
    assert result["quoted"] > 0
    assert result["crossed_quotes"] == 0
    percentiles = result["latency_ms"]
    assert all(math.isfinite(value) for value in percentiles)
    assert percentiles == sorted(percentiles)


def check_universe(result: dict) -> None:
    # The simulated feed sent every instrument of the universe (the sample's F&O stocks and
    # the two indices), so every one has bars and a column of returns.
    assert result["universe"] > 10
    assert result["traded"] == result["universe"] == result["changes"]
    assert len(result["return_columns"]) == result["universe"]
    assert result["corr_shape"] == [result["universe"]] * 2
    assert result["corr_symmetric"]
    assert result["movers_sorted"]
    assert sum(result["breadth"]) == result["universe"]
    assert result["breadth_line_bounded"]
    # The year of daily bars through sql() counts every tick the store holds, of each key.
    assert result["daily_ticks"] == result["stored_ticks"] > 0
    assert result["daily_keys"] == result["traded_keys"]


def check_option_chain(result: dict) -> None:
    # The sample master's nearest NIFTY expiry has three strikes; the ingest followed them.
    assert result["strikes"] == [25950.0, 26000.0, 26050.0]
    assert result["calls_priced"] == result["puts_with_iv"] == 3
    assert result["atm"] in result["strikes"]
    assert result["max_pain"] in result["strikes"]
    assert result["pcr"] > 0
    assert result["smiles"] == 3
    assert result["pcr_minutes"] >= 1
    assert result["pain_in_strikes"]


PROBES = {
    "ohlc_analysis.ipynb": (OHLC_PROBE, check_ohlc),
    "tick_analysis.ipynb": (TICK_PROBE, check_ticks),
    "universe_analysis.ipynb": (UNIVERSE_PROBE, check_universe),
    "option_chain.ipynb": (OPTION_PROBE, check_option_chain),
}
# The notebooks that read a chain's ticks: their store's ingest also followed NIFTY's options.
OPTION_NOTEBOOKS = {"option_chain.ipynb"}


async def _run_ingest(settings: Settings, url: str, seconds: float, audit: bool = True) -> None:
    """The ingest on a simulator for `seconds`, then (`audit`) the day's parity audit against
    that simulator's candles, as the post-close audit would run it."""
    with psycopg.connect(url) as conn:
        records = instrument_records(conn)
    async with FeedSimulator(records, rate=settings.simulator_rate) as simulator:
        settings = replace(
            settings, upstox_access_token=Secret("notebook-test"), upstox_api_base=simulator.url
        )
        service = WebSocketService(settings, url)
        await service.start()
        try:
            await asyncio.sleep(seconds)
            simulator.stall(5)  # every frame sent is read before the stop
            await asyncio.sleep(0.5)
        finally:
            await service.stop()
        if not audit:
            return
        # The audit leaves the minute in progress out: wait for the last minute heard to end,
        # as an audit after the close would.
        now = datetime.now(IST)
        await asyncio.sleep(60 - now.second - now.microsecond / 1e6 + 0.5)
        await run_audit(url, UpstoxAccess.chosen(settings), now.date())


@pytest.fixture(scope="module")
def simulated_db_url(
    apache_server: conftest.DbServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh database with the sample instruments and a few seconds of simulated feed.

    Module-scoped: both notebooks read the same data, and filling it takes the ingest's
    run time, so it is done once.
    """
    url = apache_server.create_database()
    try:
        with psycopg.connect(url) as conn:
            load_instruments(conn, default_sample_path())
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("ingest"),
            simulator_rate=5000,
            rollup_interval_s=1,
            option_chains=(),  # the universe alone: its notebook counts every key stored
        )
        asyncio.run(_run_ingest(settings, url, INGEST_SECONDS))
        with psycopg.connect(url) as conn:
            (ticks,) = conn.execute("SELECT count(*) FROM ticks").fetchone()
        assert ticks > 0, "the simulated ingest wrote no ticks: nothing for the notebooks to read"
        yield url
    finally:
        apache_server.drop_database(url)


@pytest.fixture(scope="module")
def simulated_options_db_url(
    apache_server: conftest.DbServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Like simulated_db_url, with NIFTY's option contracts followed as well."""
    url = apache_server.create_database()
    try:
        with psycopg.connect(url) as conn:
            load_instruments(conn, default_sample_path())
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("ingest"), simulator_rate=5000, rollup_interval_s=1
        )
        # The ingest follows NIFTY's chain (the default): the sample master's few contracts.
        asyncio.run(_run_ingest(settings, url, INGEST_SECONDS, audit=False))
        with psycopg.connect(url) as conn:
            (ticks,) = conn.execute("SELECT count(*) FROM ticks WHERE delta IS NOT NULL").fetchone()
        assert ticks > 0, "the simulated ingest wrote no option ticks: nothing to read"
        yield url
    finally:
        apache_server.drop_database(url)


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """A kernel spec that starts this interpreter: the installed `python3` spec says only
    `python`, which is whatever PATH finds, not necessarily this virtualenv's."""
    root = tmp_path_factory.mktemp("kernels")
    (root / "tickvault").mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tickvault tests",
        "language": "python",
    }
    (root / "tickvault" / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(root)])


def _probe_result(cell: nbformat.NotebookNode) -> dict:
    text = "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")
    return json.loads(text.strip().splitlines()[-1])


def test_notebooks_are_stored_without_outputs() -> None:
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {path.name for path in notebooks} >= set(PROBES)
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name} is stored with outputs"
                assert cell.execution_count is None, f"{path.name} is stored executed"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda path: path.name)
def test_notebook_runs_on_simulated_feed(
    path: Path, kernel_specs: KernelSpecManager, request: pytest.FixtureRequest
) -> None:
    simulated_db_url = request.getfixturevalue(
        "simulated_options_db_url" if path.name in OPTION_NOTEBOOKS else "simulated_db_url"
    )
    notebook = nbformat.read(path, as_version=4)
    probe, check = PROBES.get(path.name, (None, None))
    if probe is not None:
        notebook.cells.append(nbformat.v4.new_code_cell(probe))
    kernel = KernelManager(kernel_name="tickvault", kernel_spec_manager=kernel_specs)
    # This checkout's packages first, whatever an older install in the venv maps.
    python_path = [str(conftest.REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        **os.environ,
        "TICKVAULT_DATABASE_URL": simulated_db_url,
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(python_path),
    }
    client = NotebookClient(
        notebook, km=kernel, timeout=120, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute(env=env)  # a cell that raises fails the test with its traceback

    if check is not None:
        check(_probe_result(notebook.cells[-1]))


def test_the_readers_take_open_ended_windows(
    simulated_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bound left out reads to that end of the data; the notebooks always give both."""
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", simulated_db_url)
    day = notebook.latest_session_day()
    symbol = notebook.busiest_symbol(day)
    start, end = notebook.day_bounds(day)

    bars = notebook.read_bars(symbol, "1m", start, end)
    assert not bars.empty
    everything = notebook.read_bars(symbol)
    assert everything[(everything.index >= start) & (everything.index < end)].equals(bars)
    assert notebook.read_bars(symbol, "1m", start=start).index[0] == bars.index[0]
    assert notebook.read_bars(symbol, "1m", end=end).index[-1] == bars.index[-1]
    # A bar is in a window when it starts in it, and 1h bars start at :15 (the session's grid):
    # a simulated run at 00:11 IST is in the bar of 23:15 the day before, outside the day. With
    # no bounds, the hours and the minutes are the same trades wherever the run fell.
    hourly = notebook.read_bars(symbol, "1h")
    assert not hourly.empty
    assert hourly["volume"].sum() == everything["volume"].sum() >= bars["volume"].sum()
    assert hourly["tick_count"].sum() == everything["tick_count"].sum()
    with pytest.raises(ValueError, match=r"interval must be one of 1m, 3m, 5m, .*, 1d"):
        notebook.read_bars(symbol, "2m")  # type: ignore[arg-type]

    with pytest.warns(notebook.RowLimitWarning, match="older ones were cut off"):
        newest = notebook.read_ticks(symbol, limit=5)
    with pytest.warns(notebook.RowLimitWarning, match="older ones were cut off"):
        from_start = notebook.read_ticks(symbol, start=start, limit=5)
    assert len(newest) == 5
    assert newest.index.is_monotonic_increasing
    assert newest.index.equals(from_start.index)
    assert newest.attrs["instrument_key"] == symbol


def test_the_helper_finds_the_checkouts_store_from_the_notebooks_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jupyter starts the kernel in `notebooks/`; `make run` keeps `.env` and `.tickvault` in
    the checkout's root. The helper must read the root's, not look for a store in notebooks/."""
    for name in ("TICKVAULT_DATA_DIR", "TICKVAULT_PG_PORT", "TICKVAULT_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".tickvault").mkdir()
    (tmp_path / ".env").write_text("TICKVAULT_PG_PORT=55999\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")

    settings = notebook.checkout_settings()

    assert settings.data_dir == tmp_path / ".tickvault"
    assert settings.pg_port == 55999


def test_outside_a_checkout_the_helper_reads_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TICKVAULT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert notebook.checkout_settings().data_dir == tmp_path / ".tickvault"
