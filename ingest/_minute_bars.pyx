# cython: language_level=3, wraparound=False
# cython: infer_types=False
"""The forming 1-minute bars' per-tick work, compiled: ingest/minute_bars.py's `_fold_ticks`
and `_changed_rows` (the reference, which has the rules and says why) rule for rule.

Every tick of every frame passes through the fold, and every changed instrument's row is
built again each publish: at 20,000 ticks/s that was a tenth of the ingest's CPU in Python.
The values keep Python's own semantics (its comparisons, its `%` and `+` of the objects the
ticks hold), so the two cannot differ on a type the decoder never makes; only the bytecode
between them is gone. tests/test_minute_bars.py holds the two to the same bars.
"""

from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM
from cpython.object cimport PyObject
from cpython.set cimport PySet_Add
from cpython.tuple cimport PyTuple_GET_ITEM

from store.tick_row import KEY, LTP, TS, VOLUME_DELTA

cdef enum:
    T_KEY = 0
    T_TS = 1
    T_LTP = 2
    T_VOLUME_DELTA = 5
    B_BUCKET = 0
    B_OPEN = 1
    B_OPEN_TS = 2
    B_HIGH = 3
    B_LOW = 4
    B_CLOSE = 5
    B_CLOSE_TS = 6
    B_VOLUME = 7
    B_COUNT = 8

if (KEY, TS, LTP, VOLUME_DELTA) != (T_KEY, T_TS, T_LTP, T_VOLUME_DELTA):
    raise ImportError("store.tick_row's columns moved: _minute_bars.pyx must follow them")

cdef object MINUTE_US = 60_000_000


cdef inline list new_bar(object bucket, tuple tick):
    cdef object ltp = tick[T_LTP]
    cdef object ts = tick[T_TS]
    return [bucket, ltp, ts, ltp, ltp, ltp, ts, tick[T_VOLUME_DELTA], 1]


cdef inline void update(list bar, object ts, tuple tick) except *:
    cdef object ltp = tick[T_LTP]
    cdef object delta
    if ts < bar[B_OPEN_TS]:
        bar[B_OPEN] = ltp
        bar[B_OPEN_TS] = ts
    if ts > bar[B_CLOSE_TS]:
        bar[B_CLOSE] = ltp
        bar[B_CLOSE_TS] = ts
    if ltp > bar[B_HIGH]:
        bar[B_HIGH] = ltp
    if ltp < bar[B_LOW]:
        bar[B_LOW] = ltp
    delta = tick[T_VOLUME_DELTA]
    if delta is not None:
        bar[B_VOLUME] = delta if bar[B_VOLUME] is None else bar[B_VOLUME] + delta
    bar[B_COUNT] = bar[B_COUNT] + 1


def fold_ticks(dict bars, set changed, list ticks) -> None:
    """The reference's `_fold_ticks`: each tick into its instrument's forming (or previous)
    bar, its key into `changed`."""
    cdef tuple tick
    cdef object key, ts, bucket
    cdef PyObject* found
    cdef list pair, forming, previous
    for tick in ticks:
        key = tick[T_KEY]
        ts = tick[T_TS]
        bucket = ts - ts % MINUTE_US
        found = PyDict_GetItem(bars, key)
        if found == NULL:
            PyDict_SetItem(bars, key, [new_bar(bucket, tick), None])
        else:
            pair = <list>found
            forming = <list>PyList_GET_ITEM(pair, 0)
            if bucket == forming[B_BUCKET]:
                update(forming, ts, tick)
            elif bucket > forming[B_BUCKET]:
                pair[1] = forming
                pair[0] = new_bar(bucket, tick)
            else:
                previous = pair[1]
                if previous is not None and bucket == previous[B_BUCKET]:
                    update(previous, ts, tick)
                else:
                    continue  # older than the published minutes: the database has it
        PySet_Add(changed, key)


cdef inline tuple values(object bar):
    cdef list b
    if bar is None:
        return (0, None, None, None, None, None, None)
    b = <list>bar
    return (b[B_BUCKET], b[B_OPEN], b[B_HIGH], b[B_LOW], b[B_CLOSE], b[B_VOLUME], b[B_COUNT])


def changed_rows(dict bars, set changed) -> dict:
    """The reference's `_changed_rows`: key -> published row of each key in `changed`."""
    cdef dict rows = {}
    cdef list pair
    for key in changed:
        pair = bars[key]
        rows[key] = (key,) + values(pair[0]) + values(pair[1])
    return rows
