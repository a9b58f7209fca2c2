# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: infer_types=False
"""The compiled slot writer of the published tables (latest_table.py has the layout).

At 20,000 ticks/s over a universe of thousands of instruments nearly every tick lands in a
slot of each table (the latest ticks and the forming bars), and the reference writer in
LatestTickPublisher (a struct pack, a crc32 and four buffer stores, a dozen Python calls per
slot) was the largest part of the ingest's CPU. `write_slots` does the same stores in C.

It takes the rows it can write exactly as the reference does and stops at the first one it
cannot say the same of (a new key, a row that is not a tuple of the shape's width, a value
that is neither None nor an exact float or int, an int past int8): the publisher writes that
row the reference way and calls again after it, so rows land in their order and every odd
case keeps the reference's one rule. `write_bodies` does the same for rows its caller packed
already (the forming bars keep theirs as C numbers: ingest/_minute_bars.pyx), stopping at a
key with no slot yet. tests/test_published_slots.py holds both to the reference's file bytes.

The seqlock's order, which the reference gets from CPython executing its stores in turn, is
kept here by the C11 builtins: the odd sequence (one 8-byte atomic store, as the reader
loads it), a release fence, the crc and the body, then the even sequence by a release
store. The GIL is held throughout, so no thread switch falls between the odd and the even
store either.
"""

from cpython.dict cimport PyDict_GetItem
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsDouble, PyLong_CheckExact
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int* overflow) except? -1
    PyObject* PyErr_Occurred()
    void PyErr_Clear()

cdef extern from *:
    """
    static inline void tv_store_relaxed(unsigned long long *at, unsigned long long value) {
        __atomic_store_n(at, value, __ATOMIC_RELAXED);
    }
    static inline void tv_store_release(unsigned long long *at, unsigned long long value) {
        __atomic_store_n(at, value, __ATOMIC_RELEASE);
    }
    static inline void tv_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    """
    void tv_store_relaxed(unsigned long long* at, unsigned long long value) noexcept nogil
    void tv_store_release(unsigned long long* at, unsigned long long value) noexcept nogil
    void tv_fence_release() noexcept nogil

DEF MAX_COLUMNS = 64

# crc32 (zlib's polynomial, reflected), eight bytes a step: the slot's crc is the reader's
# test of a whole body, and zlib's C function is not reachable without its headers.
cdef uint32_t CRC[8][256]


cdef void _crc_tables() noexcept:
    cdef uint32_t c
    cdef int n, k
    for n in range(256):
        c = n
        for k in range(8):
            c = (c >> 1) ^ 0xEDB88320U if c & 1 else c >> 1
        CRC[0][n] = c
    for n in range(256):
        c = CRC[0][n]
        for k in range(1, 8):
            c = CRC[0][c & 0xFF] ^ (c >> 8)
            CRC[k][n] = c


_crc_tables()


cdef uint32_t crc32_of(const uint8_t* data, Py_ssize_t size) noexcept nogil:
    cdef uint32_t crc = 0xFFFFFFFFU
    cdef uint32_t lo, hi
    while size >= 8:
        lo = (data[0] | (<uint32_t>data[1] << 8) | (<uint32_t>data[2] << 16)
              | (<uint32_t>data[3] << 24)) ^ crc
        hi = (data[4] | (<uint32_t>data[5] << 8) | (<uint32_t>data[6] << 16)
              | (<uint32_t>data[7] << 24))
        crc = (CRC[7][lo & 0xFF] ^ CRC[6][(lo >> 8) & 0xFF] ^ CRC[5][(lo >> 16) & 0xFF]
               ^ CRC[4][lo >> 24] ^ CRC[3][hi & 0xFF] ^ CRC[2][(hi >> 8) & 0xFF]
               ^ CRC[1][(hi >> 16) & 0xFF] ^ CRC[0][hi >> 24])
        data += 8
        size -= 8
    while size > 0:
        crc = CRC[0][(crc ^ data[0]) & 0xFF] ^ (crc >> 8)
        data += 1
        size -= 1
    return crc ^ 0xFFFFFFFFU


def crc32(const uint8_t[::1] data) -> int:
    """zlib.crc32 of `data`, as write_slots computes it (for the tests)."""
    return crc32_of(&data[0] if data.shape[0] else NULL, data.shape[0])


cdef bint pack_row(tuple row, Py_ssize_t columns, const uint8_t* codes, uint8_t* body):
    """The row's mask and columns into `body` as the reference's struct packs them; False,
    with nothing else known, where the reference's own rule must decide."""
    cdef uint32_t mask = 0
    cdef Py_ssize_t column
    cdef object value
    cdef double real
    cdef long long whole
    cdef int overflow = 0
    cdef uint8_t* at = body + 4
    for column in range(columns):
        value = <object>PyTuple_GET_ITEM(row, column + 1)
        if value is None:
            mask |= (<uint32_t>1) << column
            memset(at, 0, 8)
        elif codes[column] == c"d":
            if PyFloat_CheckExact(value):
                real = PyFloat_AS_DOUBLE(value)
            elif PyLong_CheckExact(value):
                real = PyLong_AsDouble(value)
                if real == -1.0 and PyErr_Occurred() != NULL:
                    PyErr_Clear()  # past a double: the reference says what happens
                    return False
            else:
                return False
            memcpy(at, &real, 8)
        else:
            if not PyLong_CheckExact(value):
                return False
            whole = PyLong_AsLongLongAndOverflow(value, &overflow)
            if overflow:
                return False
            memcpy(at, &whole, 8)
        at += 8
    memcpy(body, &mask, 4)
    return True


cdef int store_body(uint8_t* base, Py_ssize_t size, object entry, const uint8_t* body,
                    Py_ssize_t body_size) except -1:
    """One packed body into its slot, as the reference stores it: 1; 0 where the entry is not
    what the publisher keeps (`slots`' [layout, seq, seq word, body offset]), which then
    leaves the row to the reference."""
    cdef object seq_object
    cdef long long seq, word, at
    cdef uint32_t crc
    cdef uint8_t* slot
    if type(entry) is not list or PyList_GET_SIZE(entry) != 4:
        return 0
    seq_object = <object>PyList_GET_ITEM(entry, 1)
    if not PyLong_CheckExact(seq_object):
        return 0
    seq = seq_object
    word = <object>PyList_GET_ITEM(entry, 2)
    at = <object>PyList_GET_ITEM(entry, 3)
    if word < 0 or at != word * 8 + 12 or at + body_size > size:
        return 0
    crc = crc32_of(body, body_size)
    slot = base + word * 8
    # From the odd store to the even one, as the reference: seq, crc, body, seq + 1.
    tv_store_relaxed(<unsigned long long*>slot, <unsigned long long>(seq + 1))
    tv_fence_release()
    memcpy(slot + 8, &crc, 4)
    memcpy(slot + 12, body, body_size)
    tv_store_release(<unsigned long long*>slot, <unsigned long long>(seq + 2))
    (<list>entry)[1] = seq + 2
    return 1


def write_slots(
    uint8_t[::1] table, dict slots, list rows, Py_ssize_t start, bytes codes
) -> tuple:
    """Write rows[start:] to their slots until one needs the reference (see the module);
    returns (the index of that row, or len(rows), how many were written).

    `slots` is the publisher's key -> [layout, seq, seq word, body offset]; the seq is
    advanced here as the reference advances it. `codes` is the shape's struct codes, "d"
    (float8) or "q" (int8 and timestamptz), one per column after the key.
    """
    cdef Py_ssize_t columns = len(codes)
    cdef Py_ssize_t body_size = 4 + 8 * columns
    cdef Py_ssize_t size = table.shape[0]
    cdef const uint8_t* code = <const uint8_t*>(<char*>codes)
    cdef uint8_t body[4 + 8 * MAX_COLUMNS]
    cdef Py_ssize_t i = start
    cdef Py_ssize_t n = PyList_GET_SIZE(rows)
    cdef PyObject* found
    cdef object row
    cdef uint8_t* base = &table[0] if size else NULL
    if columns > MAX_COLUMNS:
        raise ValueError(f"{columns} columns: a slot holds at most {MAX_COLUMNS}")
    while i < n:
        row = <object>PyList_GET_ITEM(rows, i)
        if not PyTuple_CheckExact(row) or PyTuple_GET_SIZE(row) != columns + 1:
            break
        found = PyDict_GetItem(slots, (<tuple>row)[0])
        if found == NULL or not pack_row(<tuple>row, columns, code, body):
            break
        if not store_body(base, size, <object>found, body, body_size):
            break
        i += 1
    return i, i - start


def write_bodies(
    uint8_t[::1] table, dict slots, list keys, const uint8_t[::1] bodies, Py_ssize_t start,
    Py_ssize_t body_size
) -> tuple:
    """Write the bodies of keys[start:], packed already (`bodies` holds one per key, each
    `body_size` bytes: the mask, then the columns), to their slots until a key has none yet
    (its first row goes through the reference); returns (the index of that key, or
    len(keys), how many were written)."""
    cdef Py_ssize_t size = table.shape[0]
    cdef Py_ssize_t i = start
    cdef Py_ssize_t n = PyList_GET_SIZE(keys)
    cdef PyObject* found
    cdef uint8_t* base = &table[0] if size else NULL
    if bodies.shape[0] != n * body_size:
        raise ValueError(f"{bodies.shape[0]} bytes of bodies for {n} keys of {body_size}")
    while i < n:
        found = PyDict_GetItem(slots, <object>PyList_GET_ITEM(keys, i))
        if found == NULL or not store_body(base, size, <object>found, &bodies[i * body_size],
                                           body_size):
            break
        i += 1
    return i, i - start
