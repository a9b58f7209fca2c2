"""The capacity planner on its own: where keys go under the per-mode limits, with no sockets.

Limits are mode -> (keys when the mode is alone on a connection, keys per mode when modes are
combined). The same cases the socket tests in test_client.py drive through a live feed are
checked here directly, with the edges those cannot reach cheaply.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

from ingest.client import SubscriptionLimitError, planner
from ingest.client.planner import Assignment, Capacity, unique

LIMITS = {"full": (3, 2), "ltpc": (4, 3)}


def keys(n: int, prefix: str = "K") -> list[str]:
    return [f"{prefix}|{i}" for i in range(1, n + 1)]


def apply(held: list[dict[str, str]], plan: dict[int, Assignment], mode: str) -> None:
    """What the client does with a plan: each connection takes its keys in `mode`."""
    for index, assignment in plan.items():
        while len(held) <= index:
            held.append({})
        for key in (*assignment.new, *assignment.changed):
            held[index][key] = mode


# -- one mode ---------------------------------------------------------------------------------


def test_a_mode_alone_may_fill_a_connection_to_its_single_limit() -> None:
    plan = Capacity(LIMITS, 1).plan(keys(3), "full", [{}])
    assert plan == {0: Assignment(new=keys(3))}


def test_one_key_past_the_single_limit_is_refused_whole() -> None:
    with pytest.raises(SubscriptionLimitError, match=r"cannot subscribe 4 keys in mode 'full'"):
        Capacity(LIMITS, 1).plan(keys(4), "full", [{}])


def test_a_full_connection_refuses_more_and_says_there_is_no_room() -> None:
    held = [dict.fromkeys(keys(3), "full")]
    with pytest.raises(SubscriptionLimitError, match=r"2 keys in mode 'full'.* 0 more"):
        Capacity(LIMITS, 1).plan(["T|4", "T|5"], "full", held)


def test_keys_already_held_in_the_mode_cost_nothing() -> None:
    held = [dict.fromkeys(keys(3), "full")]
    assert Capacity(LIMITS, 1).plan(keys(3), "full", held) == {}


# -- modes combined ---------------------------------------------------------------------------


def test_a_second_mode_is_refused_while_the_first_exceeds_the_combined_limit() -> None:
    # Three full keys fit alone (3) but not combined (2), so no ltpc key may join them.
    held = [dict.fromkeys(keys(3), "full")]
    with pytest.raises(SubscriptionLimitError, match=r"1 keys in mode 'ltpc'"):
        Capacity(LIMITS, 1).plan(["T|6"], "ltpc", held)


def test_a_second_mode_fits_up_to_its_combined_limit() -> None:
    held = [dict.fromkeys(keys(2), "full")]
    capacity = Capacity(LIMITS, 1)
    assert capacity.plan(keys(3, "L"), "ltpc", held) == {0: Assignment(new=keys(3, "L"))}
    with pytest.raises(SubscriptionLimitError, match=r"room for 3 more"):
        capacity.plan(keys(4, "L"), "ltpc", held)


def test_room_follows_the_single_and_the_combined_limits() -> None:
    capacity = Capacity(LIMITS, 1)
    assert capacity.room(Counter(), "full") == 3
    assert capacity.room(Counter(full=1), "full") == 2
    assert capacity.room(Counter(full=1), "ltpc") == 3  # combined: ltpc 3 beside full 1
    assert capacity.room(Counter(full=2, ltpc=1), "ltpc") == 2
    assert capacity.room(Counter(full=3), "ltpc") == -1  # full is over its combined limit
    assert capacity.room(Counter(full=0, ltpc=4), "ltpc") == 0  # a zero count is no mode


# -- mode changes -----------------------------------------------------------------------------


def test_a_mode_change_inside_the_combined_limits_stays_on_its_connection() -> None:
    held = [dict.fromkeys(keys(3), "full")]
    plan = Capacity(LIMITS, 1).plan(["K|3"], "ltpc", held)  # full 2, ltpc 1: both within
    assert plan == {0: Assignment(changed=["K|3"])}
    assert held == [dict.fromkeys(keys(3), "full")]  # the plan changed nothing by itself


def test_a_mode_change_that_would_break_the_combined_limit_is_refused() -> None:
    # Four ltpc keys fit alone (4); moving one to full leaves three ltpc beside it, one more
    # than ltpc's combined limit of 2.
    limits = {"full": (3, 2), "ltpc": (4, 2)}
    held = [dict.fromkeys(keys(4), "ltpc")]
    with pytest.raises(SubscriptionLimitError, match=r"cannot subscribe 1 keys in mode 'full'"):
        Capacity(limits, 1).plan(["K|4"], "full", held)
    assert held == [dict.fromkeys(keys(4), "ltpc")]


def test_mode_changes_and_new_keys_in_one_request() -> None:
    held = [{"K|1": "full", "K|2": "full"}]
    plan = Capacity(LIMITS, 1).plan(["K|2", "N|1", "N|2"], "ltpc", held)
    assert plan == {0: Assignment(new=["N|1", "N|2"], changed=["K|2"])}


def test_a_held_key_changes_mode_on_the_connection_that_holds_it() -> None:
    held = [dict.fromkeys(keys(3), "full"), {"B|1": "full"}]
    plan = Capacity(LIMITS, 2).plan(["B|1"], "ltpc", held)
    assert plan == {1: Assignment(changed=["B|1"])}


# -- several connections ----------------------------------------------------------------------


def test_a_universe_beyond_one_connection_is_spread_in_order() -> None:
    limits = {"full": (2, 1), "ltpc": (5, 2)}
    universe = keys(5)
    plan = Capacity(limits, 3).plan(universe, "full", [{}])
    assert plan == {
        0: Assignment(new=universe[0:2]),
        1: Assignment(new=universe[2:4]),
        2: Assignment(new=universe[4:5]),
    }


def test_spread_connections_refuse_past_their_total_room() -> None:
    limits = {"full": (2, 1), "ltpc": (5, 2)}
    held: list[dict[str, str]] = [{}]
    capacity = Capacity(limits, 3)
    apply(held, capacity.plan(keys(5), "full", held), "full")
    with pytest.raises(SubscriptionLimitError, match=r"3 connection\(s\) have room for 1"):
        capacity.plan(["T|1", "T|2"], "full", held)
    assert capacity.plan(["T|1"], "full", held) == {2: Assignment(new=["T|1"])}


def test_new_keys_first_fill_the_room_left_on_open_connections() -> None:
    held = [{"A|1": "full"}, {}]
    plan = Capacity(LIMITS, 2).plan(keys(4), "full", held)
    assert plan == {0: Assignment(new=keys(2)), 1: Assignment(new=["K|3", "K|4"])}


def test_connections_not_open_yet_count_up_to_max_connections() -> None:
    # Only connection 0 exists; the plan may use 1 and 2 and no further.
    capacity = Capacity({"ltpc": (2, 2)}, 3)
    assert set(capacity.plan(keys(6), "ltpc", [{}])) == {0, 1, 2}
    with pytest.raises(SubscriptionLimitError, match=r"3 connection\(s\) have room for 6"):
        capacity.plan(keys(7), "ltpc", [{}])


# -- all or nothing, bad input ------------------------------------------------------------------


def test_a_request_that_does_not_fit_changes_nothing() -> None:
    held = [{"K|1": "full", "K|2": "full"}]
    before = [dict(modes) for modes in held]
    with pytest.raises(SubscriptionLimitError, match="nothing was subscribed"):
        # K|1 would change mode fine, but the new keys do not fit: none of it happens.
        Capacity(LIMITS, 1).plan(["K|1", *keys(3, "N")], "ltpc", held)
    assert held == before


def test_an_unknown_mode_is_a_value_error_naming_the_configured_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown mode 'fool'; configured modes: full, ltpc"):
        Capacity(LIMITS, 1).plan(["K|1"], "fool", [{}])


def test_an_unknown_mode_is_not_a_limit_error() -> None:
    with pytest.raises(ValueError, match="unknown mode") as caught:
        Capacity(LIMITS, 1).plan(["K|1"], "fool", [{}])
    assert not isinstance(caught.value, SubscriptionLimitError)


def test_duplicates_in_a_request_count_once() -> None:
    request = unique(["K|1", "K|2", "K|1", "K|3", "K|2"])
    assert request == ["K|1", "K|2", "K|3"]  # first order kept
    assert Capacity(LIMITS, 1).plan(request, "full", [{}]) == {0: Assignment(new=request)}


def test_one_string_is_not_taken_for_a_list_of_keys() -> None:
    with pytest.raises(TypeError, match="not one string"):
        unique("NSE_EQ|INE009A01021")


# -- the message --------------------------------------------------------------------------------


def test_the_refusal_says_what_was_asked_what_is_left_and_the_caps() -> None:
    held = [{"K|1": "full"}]
    with pytest.raises(SubscriptionLimitError) as caught:
        Capacity(LIMITS, 2).plan(keys(6, "N"), "full", held)
    assert str(caught.value) == (
        "cannot subscribe 6 keys in mode 'full': 2 connection(s) have room for 5 more "
        "(per connection 3 keys when 'full' is the only mode, 2 when modes are combined); "
        "nothing was subscribed"
    )


def test_the_refusal_is_a_value_error_so_callers_may_catch_either() -> None:
    assert issubclass(SubscriptionLimitError, ValueError)


def test_the_planner_does_no_io() -> None:
    """It stays testable without sockets only while it imports nothing that does I/O."""
    tree = ast.parse(Path(planner.__file__).read_text())
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
        )
    }
    assert imported <= {"__future__", "collections", "dataclasses"}
