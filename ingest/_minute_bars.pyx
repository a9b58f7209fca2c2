# cython: language_level=3, wraparound=False
# cython: infer_types=False, cdivision=True
"""The forming 1-minute bars, compiled: ingest/minute_bars.py's `PythonMinuteBarHandler`
(the reference, which has the rules and says why) rule for rule, each instrument's two bars
held as C numbers and published as packed slot bodies.

Live at 20,000 ticks/s, the bars held as lists of Python numbers cost a quarter of the
ingest's CPU (BENCHMARKS.md, issue 21): every tick made new ints for the count and the
volume, and every publish built a 15-tuple per instrument from objects long out of the
cache, which the slot writer then read once more. Here a tick reads three values of its
tuple (just decoded, still in the cache) and updates doubles and int64s in place, and a
publish packs each changed instrument's slot body from them (`take_published`).

A value that C numbers cannot hold as Python holds it (a price that is not an exact float,
a time that is not an exact int within +-4e18, a delta or a volume past int64: the decoder
makes none of them, but a hostile frame's times can be anything) moves that instrument's
bars to Python objects for good, folded from then on by Python's own operators, so that the
two implementations cannot differ. tests/test_minute_bars.py holds them to the same bars,
rows and published bytes.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_AsSsize_t, PyLong_CheckExact
from cpython.object cimport Py_LT, PyObject, PyObject_RichCompareBool
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int* overflow) except? -1

cdef extern from *:
    """
    static inline int tv_add_overflows(long long a, long long b, long long *sum) {
        return __builtin_add_overflow(a, b, sum);
    }
    """
    bint tv_add_overflows(long long a, long long b, long long* total) noexcept nogil

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
    COLUMNS = 14  # of the published row after its key: the forming bar's 7, the previous 7
    BODY_SIZE = 4 + 8 * COLUMNS  # the slot body: the mask of None columns, then the columns

if (KEY, TS, LTP, VOLUME_DELTA) != (T_KEY, T_TS, T_LTP, T_VOLUME_DELTA):
    raise ImportError("store.tick_row's columns moved: _minute_bars.pyx must follow them")

# The published row's columns as the slot body packs them (ingest/channels/latest_table.py's
# Shape: "d" a double, "q" an int64); minute_bars.py checks this against BAR_COLUMN_TYPES.
BODY_CODES = "qddddqq" * 2

cdef object MINUTE_US = 60_000_000
cdef int64_t MINUTE = 60_000_000
cdef int64_t SAFE = 4_000_000_000_000_000_000  # |t| below this: t - t % MINUTE stays in int64


cdef struct Bar:
    int64_t bucket
    double open
    int64_t open_ts
    double high
    double low
    double close
    int64_t close_ts
    int64_t volume
    int64_t count
    bint has_volume  # False while every delta was None: the row's volume is None, as SQL's sum


cdef struct Pair:
    Bar forming
    Bar previous
    bint has_previous
    bint in_python  # the bars are Python objects, in MinuteBars._python, from now on
    bint changed  # listed in MinuteBars._changed since the last take


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


cdef inline bint safe_time(object value, int64_t* out) noexcept:
    return small_int(value, out) and -SAFE <= out[0] <= SAFE


cdef inline int64_t floor_minute(int64_t t) noexcept:
    return t - (t % MINUTE + MINUTE) % MINUTE  # Python's % floors: so does this


cdef inline bint c_values(tuple tick, int64_t* ts, double* ltp, int64_t* delta, bint* has_delta):
    """The tick's time, price and delta as C holds them; False where it cannot."""
    cdef object price = tick[T_LTP]
    cdef object change = tick[T_VOLUME_DELTA]
    if not safe_time(tick[T_TS], ts) or not PyFloat_CheckExact(price):
        return False
    ltp[0] = PyFloat_AS_DOUBLE(price)
    has_delta[0] = change is not None
    return not has_delta[0] or small_int(change, delta)


cdef inline void c_new(Bar* bar, int64_t bucket, int64_t ts, double ltp, int64_t delta,
                       bint has_delta) noexcept:
    bar.bucket = bucket
    bar.open = bar.high = bar.low = bar.close = ltp
    bar.open_ts = bar.close_ts = ts
    bar.volume = delta if has_delta else 0
    bar.has_volume = has_delta
    bar.count = 1


cdef inline bint c_update(Bar* bar, int64_t ts, double ltp, int64_t delta,
                          bint has_delta) noexcept:
    """The reference's `_update`; False, with the bar untouched, where the volume would
    pass int64 (then Python's ints take over)."""
    cdef long long volume = delta
    if has_delta and bar.has_volume and tv_add_overflows(bar.volume, delta, &volume):
        return False
    if ts < bar.open_ts:
        bar.open = ltp
        bar.open_ts = ts
    if ts > bar.close_ts:
        bar.close = ltp
        bar.close_ts = ts
    if ltp > bar.high:
        bar.high = ltp
    if ltp < bar.low:
        bar.low = ltp
    if has_delta:
        bar.volume = volume
        bar.has_volume = True
    bar.count += 1
    return True


cdef list c_as_list(Bar* bar):
    """The bar as the reference holds it."""
    return [bar.bucket, bar.open, bar.open_ts, bar.high, bar.low, bar.close, bar.close_ts,
            bar.volume if bar.has_volume else None, bar.count]


cdef bint c_from_list(list bar, Bar* out):
    """A bar in the reference's form (as seeded) into `out`; False where C cannot hold it."""
    cdef object volume
    if len(bar) != 9:
        return False
    for price in (bar[B_OPEN], bar[B_HIGH], bar[B_LOW], bar[B_CLOSE]):
        if not PyFloat_CheckExact(price):
            return False
    if not (safe_time(bar[B_BUCKET], &out.bucket) and safe_time(bar[B_OPEN_TS], &out.open_ts)
            and safe_time(bar[B_CLOSE_TS], &out.close_ts) and small_int(bar[B_COUNT], &out.count)):
        return False
    volume = bar[B_VOLUME]
    out.has_volume = volume is not None
    if out.has_volume and not small_int(volume, &out.volume):
        return False
    if not out.has_volume:
        out.volume = 0
    out.open = PyFloat_AS_DOUBLE(bar[B_OPEN])
    out.high = PyFloat_AS_DOUBLE(bar[B_HIGH])
    out.low = PyFloat_AS_DOUBLE(bar[B_LOW])
    out.close = PyFloat_AS_DOUBLE(bar[B_CLOSE])
    return True


cdef inline void put(tuple row, Py_ssize_t at, object value) noexcept:
    Py_INCREF(value)
    PyTuple_SET_ITEM(row, at, value)


cdef void c_put_values(tuple row, Py_ssize_t at, Bar* bar, bint present) except *:
    """The reference's `_values(bar)` into row[at:at + 7], from C numbers."""
    if not present:
        put_values(row, at, None)
        return
    put(row, at, bar.bucket)
    put(row, at + 1, bar.open)
    put(row, at + 2, bar.high)
    put(row, at + 3, bar.low)
    put(row, at + 4, bar.close)
    put(row, at + 5, bar.volume if bar.has_volume else None)
    put(row, at + 6, bar.count)


cdef void put_values(tuple row, Py_ssize_t at, object bar) except *:
    """The reference's `_values(bar)` into row[at:at + 7], from its list."""
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


cdef inline void pack_values(uint8_t* at, uint32_t* mask, int first, Bar* bar, bint present) noexcept:
    """The seven columns of one bar into a slot body (as the row above, packed): a None
    column is its bit in `mask` (from bit `first`) and eight zero bytes."""
    cdef int64_t zero = 0
    if not present:
        memcpy(at, &zero, 8)
        memset(at + 8, 0, 48)
        mask[0] |= <uint32_t>0x7E << first
        return
    memcpy(at, &bar.bucket, 8)
    memcpy(at + 8, &bar.open, 8)
    memcpy(at + 16, &bar.high, 8)
    memcpy(at + 24, &bar.low, 8)
    memcpy(at + 32, &bar.close, 8)
    if bar.has_volume:
        memcpy(at + 40, &bar.volume, 8)
    else:
        memset(at + 40, 0, 8)
        mask[0] |= <uint32_t>1 << (first + 5)
    memcpy(at + 48, &bar.count, 8)


# --- the Python objects' fold, for an instrument C numbers cannot hold ---------------------

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


cdef void update(list bar, object ts, tuple tick) except *:
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


cdef object bucket_of(object ts):
    cdef int64_t t
    if safe_time(ts, &t):
        return floor_minute(t)
    return ts - ts % MINUTE_US


cdef bint fold_object(list pair, tuple tick) except -1:
    """The reference's fold of one tick into an instrument's [forming, previous]; False
    where the tick is older than both (nothing changed)."""
    cdef object ts = tick[T_TS]
    cdef object bucket = bucket_of(ts)
    cdef list forming = pair[0]
    cdef object previous
    if bucket == forming[B_BUCKET]:
        update(forming, ts, tick)
    elif bucket > forming[B_BUCKET]:
        pair[1] = forming
        pair[0] = new_bar(bucket, tick)
    else:
        previous = pair[1]
        if previous is None or bucket != (<list>previous)[B_BUCKET]:
            return False  # older than the published minutes: the database has it
        update(<list>previous, ts, tick)
    return True


cdef class MinuteBars:
    """The compiled `MinuteBarHandler`: `on_frame`, `seed`, `take_changed` and `bars` as the
    reference's, and `take_published`, the packed slot bodies the bars' table takes."""

    cdef dict _index  # key -> its pair's index
    cdef list _keys  # index -> key
    cdef Pair* _pairs
    cdef Py_ssize_t _count
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t* _changed  # indexes changed since the last take, each once
    cdef Py_ssize_t _changed_count
    cdef dict _python  # key -> [forming, previous] as the reference holds them

    def __cinit__(self) -> None:
        self._index = {}
        self._keys = []
        self._python = {}

    def __dealloc__(self) -> None:
        free(self._pairs)
        free(self._changed)

    cdef inline Pair* _find(self, object key, Py_ssize_t* index) noexcept:
        """The key's pair and its index, or NULL before its first bar."""
        cdef PyObject* found = PyDict_GetItem(self._index, key)
        if found == NULL:
            return NULL
        index[0] = PyLong_AsSsize_t(<object>found)
        return &self._pairs[index[0]]

    cdef Pair* _add(self, object key, Py_ssize_t* index) except NULL:
        """A new pair for the key, zeroed, and its index: called once its first bar is made,
        so that a tick the reference refuses with an exception leaves no trace here either."""
        cdef Py_ssize_t capacity
        cdef void* grown
        if self._count == self._capacity:
            capacity = max(64, 2 * self._capacity)
            grown = realloc(self._pairs, capacity * sizeof(Pair))
            if grown == NULL:
                raise MemoryError()
            self._pairs = <Pair*>grown
            grown = realloc(self._changed, capacity * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self._changed = <Py_ssize_t*>grown
            self._capacity = capacity
        PyDict_SetItem(self._index, key, self._count)
        self._keys.append(key)
        memset(&self._pairs[self._count], 0, sizeof(Pair))
        index[0] = self._count
        self._count += 1
        return &self._pairs[index[0]]

    cdef inline void _mark(self, Pair* pair, Py_ssize_t index) noexcept:
        if not pair.changed:
            pair.changed = True
            self._changed[self._changed_count] = index
            self._changed_count += 1

    cdef list _to_python(self, Pair* pair, object key):
        """Move an instrument's bars to Python objects, for good; its [forming, previous]."""
        cdef list bars = [c_as_list(&pair.forming),
                          c_as_list(&pair.previous) if pair.has_previous else None]
        pair.in_python = True
        self._python[key] = bars
        return bars

    cdef tuple _python_row(self, object key):
        """The published row of an instrument whose bars are Python objects."""
        cdef list bars = self._python[key]
        cdef tuple row = PyTuple_New(15)
        put(row, 0, key)
        put_values(row, 1, bars[0])
        put_values(row, 8, bars[1])
        return row

    def on_frame(self, seq: int, list ticks) -> None:
        """Each tick into its instrument's forming bar (or the one before it, for a late
        tick): the reference's `_fold_ticks`."""
        cdef tuple tick
        cdef object key
        cdef Pair* pair
        cdef Py_ssize_t index
        cdef int64_t ts = 0, delta = 0, bucket
        cdef double ltp = 0.0
        cdef bint has_delta = False, fast
        cdef list bars
        for tick in ticks:
            key = tick[T_KEY]
            pair = self._find(key, &index)
            fast = c_values(tick, &ts, &ltp, &delta, &has_delta)
            if pair == NULL:  # the key's first tick
                if fast:
                    pair = self._add(key, &index)
                    c_new(&pair.forming, floor_minute(ts), ts, ltp, delta, has_delta)
                else:
                    bars = [new_bar(bucket_of(tick[T_TS]), tick), None]
                    pair = self._add(key, &index)
                    pair.in_python = True
                    self._python[key] = bars
            elif fast and not pair.in_python:
                bucket = floor_minute(ts)
                if bucket == pair.forming.bucket:
                    if not c_update(&pair.forming, ts, ltp, delta, has_delta):
                        update(self._to_python(pair, key)[0], tick[T_TS], tick)
                elif bucket > pair.forming.bucket:
                    pair.previous = pair.forming
                    pair.has_previous = True
                    c_new(&pair.forming, bucket, ts, ltp, delta, has_delta)
                elif pair.has_previous and bucket == pair.previous.bucket:
                    if not c_update(&pair.previous, ts, ltp, delta, has_delta):
                        update(self._to_python(pair, key)[1], tick[T_TS], tick)
                else:
                    continue  # older than the published minutes: the database has it
            else:
                if not pair.in_python:
                    self._to_python(pair, key)
                if not fold_object(self._python[key], tick):
                    continue
            self._mark(pair, index)

    def seed(self, rows) -> None:
        """The reference's `seed`: each row (key, then a bar in the reference's form) becomes
        its instrument's forming bar, and the bar it had becomes the previous one."""
        cdef Pair* pair
        cdef Py_ssize_t index
        cdef Bar bar
        cdef bint fresh
        cdef list values
        for row in rows:
            key = row[0]
            values = list(row[1:])
            pair = self._find(key, &index)
            fresh = pair == NULL
            if fresh:
                pair = self._add(key, &index)
            if not pair.in_python and c_from_list(values, &bar):
                if not fresh:
                    pair.previous = pair.forming
                    pair.has_previous = True
                pair.forming = bar
            else:
                if fresh:
                    before = None
                elif pair.in_python:
                    before = self._python[key][0]
                else:
                    before = c_as_list(&pair.forming)
                self._python[key] = [values, before]
                pair.in_python = True
            self._mark(pair, index)

    def take_changed(self) -> dict:
        """key -> published row of each instrument whose bars changed since the last take:
        the reference's `take_changed`."""
        cdef dict rows = {}
        cdef Py_ssize_t n
        cdef Pair* pair
        cdef tuple row
        for n in range(self._changed_count):
            pair = &self._pairs[self._changed[n]]
            pair.changed = False
            key = self._keys[self._changed[n]]
            if pair.in_python:
                row = self._python_row(key)
            else:
                row = PyTuple_New(15)
                put(row, 0, key)
                c_put_values(row, 1, &pair.forming, True)
                c_put_values(row, 8, &pair.previous, pair.has_previous)
            rows[key] = row
        self._changed_count = 0
        return rows

    def take_published(self) -> tuple:
        """What the bars' table takes of the instruments changed since the last take:
        (keys, their slot bodies packed one after another, the rows of the instruments held
        as Python objects, which the publisher packs itself)."""
        cdef list keys = []
        cdef list rows = []
        cdef Py_ssize_t n, packed = 0
        cdef Pair* pair
        cdef uint32_t mask
        cdef bytes bodies = PyBytes_FromStringAndSize(NULL, self._changed_count * BODY_SIZE)
        cdef uint8_t* body = <uint8_t*>PyBytes_AS_STRING(bodies)
        for n in range(self._changed_count):
            pair = &self._pairs[self._changed[n]]
            pair.changed = False
            key = self._keys[self._changed[n]]
            if pair.in_python:
                rows.append(self._python_row(key))
                continue
            mask = 0
            pack_values(body + 4, &mask, 0, &pair.forming, True)
            pack_values(body + 4 + 56, &mask, 7, &pair.previous, pair.has_previous)
            memcpy(body, &mask, 4)
            keys.append(key)
            body += BODY_SIZE
            packed += 1
        self._changed_count = 0
        return keys, bodies[: packed * BODY_SIZE] if rows else bodies, rows

    @property
    def bars(self) -> dict:
        """key -> [forming, previous], as the reference holds them (for the tests)."""
        cdef Py_ssize_t index
        cdef Pair* pair
        cdef dict bars = {}
        for index in range(self._count):
            key = self._keys[index]
            pair = &self._pairs[index]
            if pair.in_python:
                bars[key] = self._python[key]
            else:
                bars[key] = [c_as_list(&pair.forming),
                             c_as_list(&pair.previous) if pair.has_previous else None]
        return bars
