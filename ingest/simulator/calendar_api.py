"""The simulator's market calendar and status: Upstox's timings, holidays and status endpoints.

Tests run at any hour, so the simulated market trades the whole of the current IST day on
every exchange, and its segments report NORMAL_OPEN (what its feed says in `market_info`)
until a test changes them through `/_sim/market_status`. Other days follow the regular hours,
with no sessions on weekends, and the holiday list: a one-day closure on 26 January and a
Diwali holiday on 1 November with an evening Muhurat session, each of the current year
(today excepted, which always trades).

Answers have Upstox's shapes (shared/specs/upstox-rest.md): epoch milliseconds, `data` lists,
errors UDAPI1088 (bad date) and UDAPI1089 (bad exchange).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from websockets.http11 import Response

from core.ist import IST
from ingest.simulator.protocol import error_response, json_response
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb

MARKET_PATH = "/v2/market/"
BAD_DATE = {"errorCode": "UDAPI1088", "message": "Invalid date"}
BAD_EXCHANGE = {"errorCode": "UDAPI1089", "message": "Invalid exchange"}
# MarketStatus name -> its enum value (NORMAL_OPEN -> 2, ...).
STATUS_VALUES = {value.name: value.number for value in pb.MarketStatus.DESCRIPTOR.values}
# Regular hours (IST, minutes after midnight) of the exchanges Upstox names.
REGULAR_MINUTES = {
    "NSE": (555, 930),
    "NFO": (555, 930),
    "BSE": (555, 930),
    "BFO": (555, 930),
    "CDS": (540, 1020),
    "BCD": (540, 1020),
    "MCX": (540, 1410),
}
# The feed segment whose status answers /v2/market/status/{exchange}.
SEGMENT_OF = {
    "NSE": "NSE_EQ",
    "NFO": "NSE_FO",
    "BSE": "BSE_EQ",
    "BFO": "BSE_FO",
    "CDS": "NCD_FO",
    "BCD": "BCD_FO",
    "MCX": "MCX_FO",
}
DEFAULT_SEGMENTS = ("NSE_EQ", "NSE_FO", "NSE_INDEX")


@dataclass(frozen=True)
class Holiday:
    """One entry of Upstox's holiday list; `open_exchanges` maps exchange -> (start, end) in
    minutes after IST midnight."""

    day: date
    description: str
    holiday_type: str
    closed_exchanges: tuple[str, ...]
    open_exchanges: Mapping[str, tuple[int, int]]

    def as_json(self) -> dict[str, object]:
        return {
            "date": self.day.isoformat(),
            "description": self.description,
            "holiday_type": self.holiday_type,
            "closed_exchanges": list(self.closed_exchanges),
            "open_exchanges": self.sessions_json(),
        }

    def sessions_json(self) -> list[dict[str, object]]:
        return [
            _session_json(self.day, exchange, minutes)
            for exchange, minutes in self.open_exchanges.items()
        ]


def default_holidays(year: int) -> list[Holiday]:
    """The holidays the simulator lists for `year`."""
    equity = ("NSE", "NFO", "BSE", "BFO", "CDS", "BCD")
    return [
        Holiday(date(year, 1, 26), "Republic Day", "TRADING_HOLIDAY", (*equity, "MCX"), {}),
        Holiday(
            date(year, 11, 1),
            "Diwali Laxmi Pujan (Muhurat trading)",
            "TRADING_HOLIDAY",
            ("CDS", "BCD"),
            {"NSE": (1080, 1140), "NFO": (1080, 1140), "BSE": (1080, 1140), "MCX": (1080, 1140)},
        ),
    ]


def ist_today() -> date:
    return datetime.now(IST).date()


class SimulatedMarket:
    """What the REST endpoints answer, and the segment statuses the feed reports."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = dict.fromkeys(DEFAULT_SEGMENTS, pb.NORMAL_OPEN)
        self.updated_ms = time.time_ns() // 1_000_000

    def set_statuses(self, names: Mapping[str, str]) -> None:
        """segment -> status name (NORMAL_CLOSE, ...); raises ValueError for an unknown name."""
        unknown = sorted(set(names.values()) - set(STATUS_VALUES))
        if unknown:
            raise ValueError(f"unknown status {', '.join(unknown)}")
        self.statuses.update({segment: STATUS_VALUES[name] for segment, name in names.items()})
        self.updated_ms = time.time_ns() // 1_000_000

    def holidays(self, year: int) -> list[Holiday]:
        today = ist_today()
        return [holiday for holiday in default_holidays(year) if holiday.day != today]

    def timings(self, day: date) -> list[dict[str, object]]:
        """The sessions of `day` per exchange, as /v2/market/timings/{date} lists them."""
        if day == ist_today():
            return [_session_json(day, exchange, (0, 1440)) for exchange in REGULAR_MINUTES]
        holiday = next((h for h in self.holidays(day.year) if h.day == day), None)
        if holiday is not None:
            return holiday.sessions_json()
        if day.weekday() >= 5:
            return []
        return [
            _session_json(day, exchange, minutes) for exchange, minutes in REGULAR_MINUTES.items()
        ]

    def answer(self, path: str) -> Response:
        """GET /v2/market/timings/{date}, /holidays, /holidays/{date}, /status/{exchange}."""
        parts = path[len(MARKET_PATH) :].strip("/").split("/")
        if parts[0] == "status" and len(parts) == 2:
            return self._status(parts[1])
        if parts[0] not in ("timings", "holidays") or len(parts) > 2:
            return error_response(404, {"message": "not found"})
        if parts[0] == "holidays" and len(parts) == 1:
            data = [h.as_json() for h in self.holidays(ist_today().year)]
            return json_response(200, {"status": "success", "data": data})
        try:
            day = date.fromisoformat(parts[1]) if len(parts) == 2 else None
        except ValueError:
            day = None
        if day is None:
            return error_response(400, BAD_DATE)
        if parts[0] == "timings":
            return json_response(200, {"status": "success", "data": self.timings(day)})
        data = [h.as_json() for h in self.holidays(day.year) if h.day == day]
        return json_response(200, {"status": "success", "data": data})

    def _status(self, exchange: str) -> Response:
        segment = SEGMENT_OF.get(exchange)
        if segment is None:
            return error_response(400, BAD_EXCHANGE)
        status = pb.MarketStatus.Name(self.statuses.get(segment, pb.NORMAL_OPEN))
        data = {"exchange": exchange, "status": status, "last_updated": self.updated_ms}
        return json_response(200, {"status": "success", "data": data})


def _session_json(day: date, exchange: str, minutes: tuple[int, int]) -> dict[str, object]:
    midnight = datetime.combine(day, datetime.min.time(), IST)
    start, end = (midnight + timedelta(minutes=m) for m in minutes)
    return {
        "exchange": exchange,
        "start_time": int(start.timestamp() * 1000),
        "end_time": int(end.timestamp() * 1000),
    }
