# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: infer_types=False
"""The compiled COPY encoder: tick rows to PostgreSQL's binary COPY tuples, in C.

psycopg's `copy.write_row` already dumps each value in C, but it gets there through three
Python-level calls per row and a dumper lookup per field; at 20,000 ticks/s that was a fifth
of the ingest's busy time. Here a block of rows becomes one `bytes` of COPY tuples in a single
call, which store.ticks hands to `copy.write` after the signature (`COPY_HEADER`) and before
the end marker (`COPY_TRAILER`).

Every value is encoded as the reference path (`copy.write_row` after `set_types`) encodes
it, so the server stores the same row; tests/test_copy_rows.py holds the two to that:

- `text`: the str as UTF-8 (store.ticks uses this path only on a UTF-8 connection);
- `int8`, and `timestamptz`, whose tick times are already the int8 microseconds since
  2000-01-01 that a binary timestamptz is: `PyLong_AsLongLong`, as psycopg's int8 dumper;
- `float8`: `PyFloat_AsDouble`, as psycopg's float8 dumper (NaN and infinities included);
- None: NULL (the server refuses it where the column is NOT NULL, as it does for write_row).

Big-endian by shifts, so it builds on any host.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_AsDouble, PyFloat_CheckExact
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLong
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

from store.tick_row import TICK_COLUMNS, TICK_PG_TYPES

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

cdef enum:
    K_TEXT = 0
    K_INT8 = 1
    K_FLOAT8 = 2
    MAX_COLUMNS = 64

# The wire kind of each column, from store.tick_row (timestamptz travels as int8 tick times).
_KIND_OF = {"text": K_TEXT, "int8": K_INT8, "timestamptz": K_INT8, "float8": K_FLOAT8}
if len(TICK_PG_TYPES) > MAX_COLUMNS or not set(TICK_PG_TYPES) <= set(_KIND_OF):
    raise ImportError("store.tick_row.TICK_PG_TYPES has a type _copyrows.pyx cannot encode")

cdef int KINDS[MAX_COLUMNS]
cdef Py_ssize_t N_COLUMNS = len(TICK_PG_TYPES)
for _index, _pg_type in enumerate(TICK_PG_TYPES):
    KINDS[_index] = _KIND_OF[_pg_type]

# Fixed per row: the int16 field count, then per field an int32 length and at most 8 bytes.
cdef Py_ssize_t ROW_FIXED = 2 + N_COLUMNS * (4 + 8)

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no header extension
COPY_TRAILER = b"\xff\xff"  # a field count of -1 ends the data


cdef inline uint8_t* put16(uint8_t* out, unsigned int value) noexcept:
    out[0] = (value >> 8) & 0xFF
    out[1] = value & 0xFF
    return out + 2


cdef inline uint8_t* put32(uint8_t* out, unsigned long value) noexcept:
    out[0] = (value >> 24) & 0xFF
    out[1] = (value >> 16) & 0xFF
    out[2] = (value >> 8) & 0xFF
    out[3] = value & 0xFF
    return out + 4


cdef inline uint8_t* put64(uint8_t* out, uint64_t value) noexcept:
    cdef int shift
    for shift in range(8):
        out[shift] = (value >> (56 - 8 * shift)) & 0xFF
    return out + 8


cdef class _Buffer:
    """A growable C buffer, freed with its owner whatever raises in between."""

    cdef uint8_t* data
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity

    def __cinit__(self, Py_ssize_t capacity):
        self.data = <uint8_t*>malloc(capacity)
        if self.data is NULL:
            raise MemoryError()
        self.capacity = capacity
        self.size = 0

    def __dealloc__(self):
        free(self.data)

    cdef uint8_t* reserve(self, Py_ssize_t more) except NULL:
        """Room for `more` bytes at the end; the pointer to write them at."""
        cdef Py_ssize_t wanted = self.size + more
        cdef uint8_t* grown
        if wanted > self.capacity:
            wanted = max(wanted, self.capacity * 2)
            grown = <uint8_t*>realloc(self.data, wanted)
            if grown is NULL:
                raise MemoryError()
            self.data = grown
            self.capacity = wanted
        return self.data + self.size


cdef inline uint8_t* put_field(uint8_t* out, int kind, object value, Py_ssize_t column) except NULL:
    """One non-text field: its int32 length, then its 8 bytes."""
    cdef double number
    cdef int64_t integer
    if kind == K_INT8:
        integer = PyLong_AsLongLong(value)
        out = put32(out, 8)
        return put64(out, <uint64_t>integer)
    if PyFloat_CheckExact(value):
        number = PyFloat_AS_DOUBLE(value)
    else:
        number = PyFloat_AsDouble(value)
    out = put32(out, 8)
    memcpy(&integer, &number, 8)
    return put64(out, <uint64_t>integer)


def encode_rows(list rows, Py_ssize_t start, Py_ssize_t stop):
    """The binary COPY tuples of rows[start:stop] (tick tuples in TICK_COLUMNS order).

    Without the signature or the end marker: the caller writes COPY_HEADER once, any number
    of these blocks, then COPY_TRAILER. A row that is not a tuple of len(TICK_COLUMNS), or a
    value its column's type cannot take, raises TypeError, ValueError or OverflowError.
    """
    start = max(0, start)
    stop = min(stop, PyList_GET_SIZE(rows))
    cdef Py_ssize_t count = max(0, stop - start)
    cdef _Buffer buffer = _Buffer(count * (ROW_FIXED + 24) + 1)
    cdef Py_ssize_t row_index, column, text_size
    cdef object row, value
    cdef const char* text
    cdef uint8_t* out
    for row_index in range(start, stop):
        row = <object>PyList_GET_ITEM(rows, row_index)
        if not PyTuple_Check(row):
            raise TypeError(f"row {row_index} is a {type(row).__name__}, not a tuple")
        if PyTuple_GET_SIZE(row) != N_COLUMNS:
            raise ValueError(
                f"row {row_index} has {PyTuple_GET_SIZE(row)} values, not {N_COLUMNS}"
            )
        out = buffer.reserve(ROW_FIXED)
        out = put16(out, N_COLUMNS)
        for column in range(N_COLUMNS):
            value = <object>PyTuple_GET_ITEM(row, column)
            if value is None:
                out = put32(out, 0xFFFFFFFF)
            elif KINDS[column] != K_TEXT:
                out = put_field(out, KINDS[column], value, column)
            else:
                if not PyUnicode_Check(value):
                    raise TypeError(
                        f"row {row_index}: {TICK_COLUMNS[column]} is a"
                        f" {type(value).__name__}, not a str"
                    )
                text = PyUnicode_AsUTF8AndSize(value, &text_size)
                if text_size > 0x7FFFFFFF:
                    raise ValueError(f"row {row_index}: {TICK_COLUMNS[column]} is too long")
                buffer.size = out - buffer.data
                out = buffer.reserve(ROW_FIXED + text_size)
                out = put32(out, <unsigned long>text_size)
                memcpy(out, text, text_size)
                out += text_size
        buffer.size = out - buffer.data
    return PyBytes_FromStringAndSize(<char*>buffer.data, buffer.size)
