"""The chain audit: our stored option chain against the option-chain endpoint, contract by
contract. The comparison on made-up chains, then end to end on the simulator: clean while
the store has what the feed sent, and a changed stored OI is found and named."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg

from core.config import Secret, Settings
from ingest.jobs.chain_audit import compare_chains, run_chain_audit, within
from ingest.service import WebSocketService
from ingest.tokens import UpstoxAccess
from ingest.upstox.option_chain import QuotedSide, QuotedStrike
from store.instruments import default_sample_path, load_instruments
from store.option_chain import OptionChain, Side, StrikeRow
from tests.test_audit import cli_audit
from tests.test_ingest_e2e import _wait_for

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 12, 4, 5, 12, 15, tzinfo=UTC)


def _ours(sides: dict[str, Side]) -> OptionChain:
    return OptionChain(
        "NIFTY",
        "NSE_INDEX|Nifty 50",
        date(2026, 12, 8),
        NOW,
        26000.0,
        26000.0,
        1.0,
        26000.0,
        [StrikeRow(26000.0, sides.get("C"), sides.get("P"))],
    )


def _side(key: str, ltp: float, oi: float, iv: float) -> Side:
    return Side(key, ts=NOW, ltp=ltp, oi=oi, iv=iv)


def test_a_contract_agrees_with_either_end_of_the_request_and_differences_are_named() -> None:
    before = _ours({"C": _side("C", 101.0, 5000, 0.14), "P": _side("P", 88.0, 7000, 0.15)})
    after = _ours({"C": _side("C", 102.5, 5000, 0.14), "P": _side("P", 88.0, 7000, 0.15)})
    theirs = [
        QuotedStrike(
            26000.0,
            26001.0,
            QuotedSide("C", 102.5, 5010, 0.1405),  # the answer came after a tick: agrees
            QuotedSide("P", 88.0, 7100, 0.15),  # OI 1.4 % apart: differs
        ),
        QuotedStrike(26050.0, 26001.0, QuotedSide("FAR", 70.0, 100, 0.13), None),
    ]
    report = compare_chains(before, after, theirs, NOW, NOW + timedelta(seconds=0.2))
    assert report.verdict == "differs"
    assert [c.instrument_key for c in report.contracts] == ["C", "P"]
    [differing] = report.differences
    assert (differing.instrument_key, differing.option_type) == ("P", "PE")
    assert (differing.ours["oi"], differing.theirs["oi"]) == (7000, 7100)
    assert report.unknown == 1  # not in our master: counted, not compared
    assert report.as_json()["differ"] == 1
    # The tolerances, at their edges.
    assert within("ltp", 100.05, 100.0)
    assert not within("ltp", 100.2, 100.0)
    assert within("iv", 0.1409, 0.14)
    assert not within("iv", 0.145, 0.14)
    assert not within("oi", None, 10.0)
    clean = compare_chains(after, after, theirs[:1], NOW, NOW)
    assert [c.agrees for c in clean.contracts] == [True, False]


def _stored(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE t.iv IS NOT NULL) FROM ticks t"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_chain_audit_is_clean_on_the_simulator_and_finds_a_changed_oi(
    db_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_url) as conn:
        load_instruments(conn, default_sample_path())
    settings = Settings(
        data_dir=tmp_path / "data",
        simulator_rate=3000,
        schedule_enabled=False,
        audit_after_close=False,
        option_chains=("NIFTY",),
    )

    async def scenario() -> None:
        service = WebSocketService(settings, db_url)
        await service.start()
        try:
            assert service.simulator is not None
            api_base = service.simulator.url
            await _wait_for(lambda: _stored(db_url)[1] > 200)  # option ticks, with IV
            service.simulator.stall(60)  # the market holds still: the endpoint is the last frames
            counts = [_stored(db_url), (-1, -1)]
            while counts[-1] != counts[-2]:  # every frame sent is stored
                await asyncio.sleep(1.0)
                counts.append(_stored(db_url))
            access = UpstoxAccess(api_base, Secret("chain-audit-token"))
            report = await run_chain_audit(db_url, access, "NIFTY", settle_s=0.2)
            assert report.verdict == "clean", report.as_json()["differences"]
            assert len(report.contracts) >= 20
            assert report.no_tick > 0  # the endpoint lists strikes outside our window

            audit_settings = replace(
                settings, upstox_access_token=Secret("chain-audit-token"), upstox_api_base=api_base
            )
            status, out, err = await asyncio.to_thread(
                cli_audit, audit_settings, db_url, "--chain", "NIFTY"
            )
            assert (status, err) == (0, "")
            assert "chain audit of NIFTY" in out
            assert "CLEAN" in out

            changed = report.contracts[0].instrument_key
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE ticks SET oi = oi * 2 + 1000 WHERE instrument_key = %s"
                    " AND ts = (SELECT max(ts) FROM ticks WHERE instrument_key = %s)",
                    [changed, changed],
                )
            altered = await run_chain_audit(db_url, access, "NIFTY", settle_s=0.2)
            assert [c.instrument_key for c in altered.differences] == [changed]
            status, out, err = await asyncio.to_thread(
                cli_audit, audit_settings, db_url, "--chain", "NIFTY", "--json"
            )
            assert status == 2
            assert changed in out
            assert "1 of" in err

            status, _, err = await asyncio.to_thread(
                cli_audit, audit_settings, db_url, "--chain", "NOSUCHINDEX"
            )
            assert status == 1
            assert "NOSUCHINDEX" in err
        finally:
            await service.stop()

    asyncio.run(scenario())
