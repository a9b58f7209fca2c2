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
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_CheckExact
from cpython.object cimport Py_LT, PyObject, PyObject_RichCompareBool
from cpython.ref cimport Py_INCREF
from cpython.set cimport PySet_Add
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport int64_t

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int* overflow) except? -1

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
cdef int64_t MINUTE = 60_000_000
cdef int64_t SAFE = 4_000_000_000_000_000_000  # |t| below this: t - t % MINUTE stays in int64


cdef inline bint small_int(object value, int64_t* out) noexcept:
    """An exact int within int64 into `out`: where C arithmetic and comparisons give what
    Python's give. False for everything else, which then takes Python's own operators."""
    cdef int overflow = 0
    cdef long long whole
    if not PyLong_CheckExact(value):
        return False
    whole = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow:
        return False
    out[0] = whole
    return True


cdef inline int less(object a, object b) except -1:
    """a < b, in C where both are exact floats or ints within int64 (NaN compares false in
    both), else by Python's operator."""
    cdef int64_t x, y
    if PyFloat_CheckExact(a) and PyFloat_CheckExact(b):
        return PyFloat_AS_DOUBLE(a) < PyFloat_AS_DOUBLE(b)
    if small_int(a, &x) and small_int(b, &y):
        return x < y
    return PyObject_RichCompareBool(a, b, Py_LT)


cdef inline list new_bar(object bucket, tuple tick):
    cdef object ltp = tick[T_LTP]
    cdef object ts = tick[T_TS]
    return [bucket, ltp, ts, ltp, ltp, ltp, ts, tick[T_VOLUME_DELTA], 1]


cdef inline void update(list bar, object ts, tuple tick) except *:
    cdef object ltp = tick[T_LTP]
    cdef object delta
    if less(ts, bar[B_OPEN_TS]):
        bar[B_OPEN] = ltp
        bar[B_OPEN_TS] = ts
    if less(bar[B_CLOSE_TS], ts):
        bar[B_CLOSE] = ltp
        bar[B_CLOSE_TS] = ts
    if less(bar[B_HIGH], ltp):
        bar[B_HIGH] = ltp
    if less(ltp, bar[B_LOW]):
        bar[B_LOW] = ltp
    delta = tick[T_VOLUME_DELTA]
    if delta is not None:
        bar[B_VOLUME] = delta if bar[B_VOLUME] is None else bar[B_VOLUME] + delta
    bar[B_COUNT] = bar[B_COUNT] + 1


cdef inline int order(object bucket, int64_t b, bint fast, object other) except -2:
    """-1, 0 or 1 as `bucket` (whose int64 is `b` where `fast`) is below, equal to or
    above `other`, as Python's == and > say."""
    cdef int64_t o
    if fast and small_int(other, &o):
        return (b > o) - (b < o)
    if bucket == other:
        return 0
    return 1 if bucket > other else -1


def fold_ticks(dict bars, set changed, list ticks) -> None:
    """The reference's `_fold_ticks`: each tick into its instrument's forming (or previous)
    bar, its key into `changed`."""
    cdef tuple tick
    cdef object key, ts, bucket
    cdef PyObject* found
    cdef list pair, forming, previous
    cdef int64_t t, b
    cdef bint fast
    cdef int side
    for tick in ticks:
        key = tick[T_KEY]
        ts = tick[T_TS]
        fast = small_int(ts, &t) and -SAFE <= t <= SAFE
        if fast:
            b = t - (t % MINUTE + MINUTE) % MINUTE  # Python's % floors: so does this
            bucket = b
        else:
            bucket = ts - ts % MINUTE_US
        found = PyDict_GetItem(bars, key)
        if found == NULL:
            PyDict_SetItem(bars, key, [new_bar(bucket, tick), None])
        else:
            pair = <list>found
            forming = pair[0]
            side = order(bucket, b, fast, forming[B_BUCKET])
            if side == 0:
                update(forming, ts, tick)
            elif side > 0:
                pair[1] = forming
                pair[0] = new_bar(bucket, tick)
            else:
                previous = pair[1]
                if previous is not None and order(bucket, b, fast, previous[B_BUCKET]) == 0:
                    update(previous, ts, tick)
                else:
                    continue  # older than the published minutes: the database has it
        PySet_Add(changed, key)


def changed_rows(dict bars, set changed) -> dict:
    """The reference's `_changed_rows`: key -> published row of each key in `changed`."""
    cdef dict rows = {}
    cdef list pair
    cdef tuple row
    for key in changed:
        pair = bars[key]
        row = PyTuple_New(15)
        put(row, 0, key)
        put_values(row, 1, pair[0])
        put_values(row, 8, pair[1])
        rows[key] = row
    return rows


cdef inline void put_values(tuple row, Py_ssize_t at, object bar) except *:
    """The reference's `_values(bar)` into row[at:at + 7]."""
    cdef Py_ssize_t i
    cdef list b
    if bar is None:
        put(row, at, 0)
        for i in range(1, 7):
            put(row, at + i, None)
        return
    b = <list>bar
    put(row, at, b[B_BUCKET])
    put(row, at + 1, b[B_OPEN])
    put(row, at + 2, b[B_HIGH])
    put(row, at + 3, b[B_LOW])
    put(row, at + 4, b[B_CLOSE])
    put(row, at + 5, b[B_VOLUME])
    put(row, at + 6, b[B_COUNT])


cdef inline void put(tuple row, Py_ssize_t at, object value) noexcept:
    Py_INCREF(value)
    PyTuple_SET_ITEM(row, at, value)
