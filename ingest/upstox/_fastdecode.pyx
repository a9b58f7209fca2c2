# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True, infer_types=False
"""The compiled FeedDecoder: protobuf wire bytes to tick tuples, no Python object per field.

It gives what ingest.upstox.decoder.PythonFeedDecoder (the reference) gives, and
tests/test_decoder_equivalence.py holds it to that. It works in two steps per frame:

1. Walk the FeedResponse's wire format in C, per our .proto, into plain structs (one per
   feeds map entry). The walk accepts and refuses exactly what the protobuf runtime (upb)
   does: unknown fields of every wire type are skipped, known fields with another wire type
   count as unknown, sub-messages that repeat are merged, a oneof that changes case starts
   its new member empty, the last of a repeated map key wins and a map entry with an unknown
   field of its own is left out, strings must be valid UTF-8, nesting stops at 100 levels.
   Anything malformed is found here, before any state changes, and raises MalformedFrame.
2. Build each tick tuple from the structs with the reference's merge rules, written out
   below in the same order: last state per instrument, volume_delta from vtt with IST day
   resets, none for a snapshot's tick, a re-sent snapshot dropped as a duplicate.

Ticks come in wire order (the reference's come in its map's hash order; within a frame the
order carries no meaning, as each instrument appears once).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_CheckExact
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.object cimport Py_EQ, PyObject, PyObject_RichCompareBool, PyTypeObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport INT64_MAX, UINT32_MAX, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy, memset

from ingest.upstox.decoded import FRAME_KINDS, STATUS_NAMES, DecodedFrame, MalformedFrame, seed_last
from store.tick_row import PG_EPOCH_UNIX_US, TICK_COLUMNS

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int* overflow) except? -1
    bint PyType_IS_GC(PyTypeObject* type)
    PyTypeObject* Py_TYPE(PyObject* obj)
    void PyObject_GC_UnTrack(void* obj)
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

# Tick columns, in store.tick_row.TICK_COLUMNS order (checked at import below).
cdef enum:
    C_TS = 1
    C_LTP = 2
    C_LTQ = 3
    C_VTT = 4
    C_VOLUME_DELTA = 5
    C_CP = 6
    C_ATP = 7
    C_OI = 8
    C_IV = 9
    C_TBQ = 10
    C_TSQ = 11
    C_BID_PRICE = 12
    C_DELTA = 16
    C_FEED_TS = 21
    C_COLUMNS = 23

_COLUMNS = {
    "ts": C_TS, "ltp": C_LTP, "ltq": C_LTQ, "vtt": C_VTT, "volume_delta": C_VOLUME_DELTA,
    "cp": C_CP, "atp": C_ATP, "oi": C_OI, "iv": C_IV, "tbq": C_TBQ, "tsq": C_TSQ,
    "bid_price": C_BID_PRICE, "delta": C_DELTA, "feed_ts": C_FEED_TS,
}
if len(TICK_COLUMNS) != C_COLUMNS or any(
    TICK_COLUMNS.index(name) != index for name, index in _COLUMNS.items()
):
    raise ImportError("store.tick_row.TICK_COLUMNS moved: _fastdecode.pyx must follow it")

cdef int64_t PG_EPOCH = PG_EPOCH_UNIX_US
cdef int64_t IST_OFFSET_US = (5 * 3600 + 30 * 60) * 1000000
cdef int64_t DAY_US = 86400 * 1000000
# Below these, the tick-time arithmetic stays far from int64's ends; above, Python ints do it.
cdef int64_t MS_SAFE = 9000000000000000  # |ms| * 1000 < 2**63
cdef int64_t US_SAFE = 4000000000000000000  # |us| + a day < 2**63
cdef int MAX_DEPTH = 100  # upb's default nesting limit, which the protobuf runtime uses

cdef object _DECODED_NEW = tuple.__new__
cdef object _KINDS = FRAME_KINDS
cdef object _STATUS = STATUS_NAMES
cdef object _DecodedFrame = DecodedFrame
cdef object _MalformedFrame = MalformedFrame

ctypedef const uint8_t* cptr

include "_instrument_keys.pxi"


# --- step 1: the wire format ---------------------------------------------------------------

cdef struct LTPC:
    double ltp
    int64_t ltt
    int64_t ltq
    double cp

cdef struct Quote:
    int64_t bid_q
    double bid_p
    int64_t ask_q
    double ask_p

cdef struct Union:
    # What Feed's oneof holds (and FullFeed's inside it); emptied when a case changes.
    int full_case  # 0 none, 1 marketFF, 2 indexFF
    LTPC ltpc
    bint has_quote  # marketFF: bidAskQuote has an element; firstLevel: firstDepth was sent
    Quote quote
    bint has_greeks
    double greeks[5]
    double atp
    int64_t vtt
    double oi
    double iv
    double tbq
    double tsq

cdef struct Entry:
    # One feeds map entry.
    cptr key
    Py_ssize_t key_len
    bint dropped  # an unknown field in the entry itself: the runtime leaves it out of the map
    int feed_case  # 0 none, 1 ltpc, 2 fullFeed, 3 firstLevelWithGreeks
    Union u

cdef struct Segment:
    # One marketInfo.segmentStatus map entry.
    cptr key
    Py_ssize_t key_len
    bint dropped
    int32_t status

cdef struct Frame:
    Entry* entries
    Py_ssize_t n_entries
    Py_ssize_t cap_entries
    Segment* segments
    Py_ssize_t n_segments
    Py_ssize_t cap_segments
    int32_t type
    int64_t current_ts
    bint has_market_info
    bint no_memory


cdef inline cptr read_varint(cptr p, cptr end, uint64_t* out) noexcept nogil:
    """At most ten bytes; bits past the 64th are dropped, as upb does."""
    cdef uint64_t value = 0
    cdef uint64_t byte
    cdef int shift = 0
    while shift < 70:
        if p >= end:
            return NULL
        byte = p[0]
        p += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            out[0] = value
            return p
        shift += 7
    return NULL


cdef inline cptr read_tag(cptr p, cptr end, uint32_t* out) noexcept nogil:
    """A tag: a varint of at most five bytes and 32 bits."""
    cdef uint64_t value = 0
    cdef cptr after
    if p[0] < 0x80:  # callers only ask while p < end
        out[0] = p[0]
        return p + 1
    after = read_varint(p, end, &value)
    if after == NULL or after - p > 5 or value > UINT32_MAX:
        return NULL
    out[0] = <uint32_t>value
    return after


cdef inline cptr read_length(cptr p, cptr end, Py_ssize_t* out) noexcept nogil:
    """A length prefix, with the bytes it promises inside the current message."""
    cdef uint64_t value = 0
    p = read_varint(p, end, &value)
    if p == NULL or value >= 0x7FFFFFFF or value > <uint64_t>(end - p):
        return NULL
    out[0] = <Py_ssize_t>value
    return p


cdef inline cptr read_double(cptr p, cptr end, double* out) noexcept nogil:
    if end - p < 8:
        return NULL
    memcpy(out, p, 8)  # little-endian hosts only: setup.py builds nothing elsewhere
    return p + 8


cdef inline cptr read_int64(cptr p, cptr end, int64_t* out) noexcept nogil:
    cdef uint64_t value = 0
    p = read_varint(p, end, &value)
    out[0] = <int64_t>value
    return p


cdef bint valid_utf8(cptr s, Py_ssize_t n) noexcept nogil:
    """Strict UTF-8, as upb and Python check it: no overlongs, surrogates or past U+10FFFF."""
    cdef Py_ssize_t i = 0
    cdef uint8_t c, c1
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
        elif c < 0xC2:
            return False
        elif c < 0xE0:
            if i + 1 >= n or (s[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
        elif c < 0xF0:
            if i + 2 >= n or (s[i + 1] & 0xC0) != 0x80 or (s[i + 2] & 0xC0) != 0x80:
                return False
            c1 = s[i + 1]
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0):
                return False
            i += 3
        elif c < 0xF5:
            if (i + 3 >= n or (s[i + 1] & 0xC0) != 0x80 or (s[i + 2] & 0xC0) != 0x80
                    or (s[i + 3] & 0xC0) != 0x80):
                return False
            c1 = s[i + 1]
            if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):
                return False
            i += 4
        else:
            return False
    return True


cdef cptr skip_field(cptr p, cptr end, uint32_t tag, int depth) noexcept nogil:
    """Past a field this walk does not read; NULL where upb would call the frame corrupt."""
    cdef uint32_t wire_type = tag & 7
    cdef uint64_t ignored = 0
    cdef Py_ssize_t n = 0
    if tag >> 3 == 0:
        return NULL
    if wire_type == 0:
        return read_varint(p, end, &ignored)
    if wire_type == 1:
        return p + 8 if end - p >= 8 else NULL
    if wire_type == 2:
        p = read_length(p, end, &n)
        return p + n if p != NULL else NULL
    if wire_type == 5:
        return p + 4 if end - p >= 4 else NULL
    if wire_type == 3:
        return skip_group(p, end, tag >> 3, depth)
    return NULL  # 4: an end-group outside its group; 6 and 7 do not exist


cdef cptr skip_group(cptr p, cptr end, uint32_t number, int depth) noexcept nogil:
    cdef uint32_t tag = 0
    if depth < 1:
        return NULL
    depth -= 1
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag & 7 == 4:
            return p if tag >> 3 == number else NULL
        p = skip_field(p, end, tag, depth)
        if p == NULL:
            return NULL
    return NULL  # the message ended inside the group


cdef cptr walk_unread(cptr p, cptr end, int depth) noexcept nogil:
    """A message none of whose fields matter here and none a string (DoubleValue)."""
    cdef uint32_t tag = 0
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        p = skip_field(p, end, tag, depth)
        if p == NULL:
            return NULL
    return p


cdef cptr walk_ltpc(cptr p, cptr end, int depth, LTPC* o) noexcept nogil:
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x09:  # 1 ltp, double
            p = read_double(p, end, &o.ltp)
        elif tag == 0x10:  # 2 ltt, int64
            p = read_int64(p, end, &o.ltt)
        elif tag == 0x18:  # 3 ltq, int64
            p = read_int64(p, end, &o.ltq)
        elif tag == 0x21:  # 4 cp, double
            p = read_double(p, end, &o.cp)
        elif tag == 0x2A:  # 5 iep, google.protobuf.DoubleValue
            p = read_length(p, end, &n)
            if p == NULL or depth < 1 or walk_unread(p, p + n, depth - 1) == NULL:
                return NULL
            p += n
        else:
            p = skip_field(p, end, tag, depth)
        if p == NULL:
            return NULL
    return p


cdef cptr walk_quote(cptr p, cptr end, int depth, Quote* o) noexcept nogil:
    cdef uint32_t tag = 0
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x08:  # 1 bidQ, int64
            p = read_int64(p, end, &o.bid_q)
        elif tag == 0x11:  # 2 bidP, double
            p = read_double(p, end, &o.bid_p)
        elif tag == 0x18:  # 3 askQ, int64
            p = read_int64(p, end, &o.ask_q)
        elif tag == 0x21:  # 4 askP, double
            p = read_double(p, end, &o.ask_p)
        else:
            p = skip_field(p, end, tag, depth)
        if p == NULL:
            return NULL
    return p


cdef cptr walk_greeks(cptr p, cptr end, int depth, double* o) noexcept nogil:
    cdef uint32_t tag = 0
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        # 1..5: delta, theta, gamma, vega, rho, doubles
        if tag & 7 == 1 and 1 <= tag >> 3 <= 5:
            p = read_double(p, end, &o[(tag >> 3) - 1])
        else:
            p = skip_field(p, end, tag, depth)
        if p == NULL:
            return NULL
    return p


cdef cptr walk_string_field_one(cptr p, cptr end, int depth) noexcept nogil:
    """A message whose field 1 is its one string (OHLC.interval, StatusInfo.status): checked."""
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x0A:
            p = read_length(p, end, &n)
            if p == NULL or not valid_utf8(p, n):
                return NULL
            p += n
        else:
            p = skip_field(p, end, tag, depth)
            if p == NULL:
                return NULL
    return p


cdef cptr walk_submessage(cptr p, cptr end, int depth, int kind) noexcept nogil:
    """A length-prefixed message checked and passed over: 1 MarketOHLC, 2 OHLC/StatusInfo."""
    cdef Py_ssize_t n = 0
    cdef uint32_t tag = 0
    cdef cptr body
    cdef cptr stop
    p = read_length(p, end, &n)
    if p == NULL or depth < 1:
        return NULL
    body = p
    stop = p + n
    depth -= 1
    if kind == 2:
        return walk_string_field_one(body, stop, depth)
    while body < stop:  # MarketOHLC: repeated OHLC ohlc = 1
        body = read_tag(body, stop, &tag)
        if body == NULL:
            return NULL
        if tag == 0x0A:
            body = walk_submessage(body, stop, depth, 2)
        else:
            body = skip_field(body, stop, tag, depth)
        if body == NULL:
            return NULL
    return body


cdef cptr walk_market_level(cptr p, cptr end, int depth, Union* u) noexcept nogil:
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    cdef Quote spare
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x0A:  # 1 bidAskQuote, repeated Quote: the first one is the best level
            p = read_length(p, end, &n)
            if p == NULL or depth < 1:
                return NULL
            if u.has_quote:
                if walk_quote(p, p + n, depth - 1, &spare) == NULL:
                    return NULL
            else:
                memset(&u.quote, 0, sizeof(Quote))
                if walk_quote(p, p + n, depth - 1, &u.quote) == NULL:
                    return NULL
                u.has_quote = True
            p += n
        else:
            p = skip_field(p, end, tag, depth)
            if p == NULL:
                return NULL
    return p


cdef cptr walk_market_ff(cptr p, cptr end, int depth, Union* u) noexcept nogil:
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x0A or tag == 0x12 or tag == 0x1A:  # 1 ltpc, 2 marketLevel, 3 optionGreeks
            p = read_length(p, end, &n)
            if p == NULL or depth < 1:
                return NULL
            if tag == 0x0A:
                if walk_ltpc(p, p + n, depth - 1, &u.ltpc) == NULL:
                    return NULL
            elif tag == 0x12:
                if walk_market_level(p, p + n, depth - 1, u) == NULL:
                    return NULL
            else:
                u.has_greeks = True
                if walk_greeks(p, p + n, depth - 1, u.greeks) == NULL:
                    return NULL
            p += n
        elif tag == 0x22:  # 4 marketOHLC
            p = walk_submessage(p, end, depth, 1)
        elif tag == 0x29:  # 5 atp, double
            p = read_double(p, end, &u.atp)
        elif tag == 0x30:  # 6 vtt, int64
            p = read_int64(p, end, &u.vtt)
        elif tag == 0x39:  # 7 oi
            p = read_double(p, end, &u.oi)
        elif tag == 0x41:  # 8 iv
            p = read_double(p, end, &u.iv)
        elif tag == 0x49:  # 9 tbq
            p = read_double(p, end, &u.tbq)
        elif tag == 0x51:  # 10 tsq
            p = read_double(p, end, &u.tsq)
        else:  # 11..16 are scalars this decoder does not keep
            p = skip_field(p, end, tag, depth)
        if p == NULL:
            return NULL
    return p


cdef cptr walk_index_ff(cptr p, cptr end, int depth, Union* u) noexcept nogil:
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x0A:  # 1 ltpc
            p = read_length(p, end, &n)
            if p == NULL or depth < 1 or walk_ltpc(p, p + n, depth - 1, &u.ltpc) == NULL:
                return NULL
            p += n
        elif tag == 0x12:  # 2 marketOHLC
            p = walk_submessage(p, end, depth, 1)
        else:
            p = skip_field(p, end, tag, depth)
        if p == NULL:
            return NULL
    return p


cdef cptr walk_first_level(cptr p, cptr end, int depth, Union* u) noexcept nogil:
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x0A or tag == 0x12 or tag == 0x1A:  # 1 ltpc, 2 firstDepth, 3 optionGreeks
            p = read_length(p, end, &n)
            if p == NULL or depth < 1:
                return NULL
            if tag == 0x0A:
                if walk_ltpc(p, p + n, depth - 1, &u.ltpc) == NULL:
                    return NULL
            elif tag == 0x12:
                u.has_quote = True
                if walk_quote(p, p + n, depth - 1, &u.quote) == NULL:
                    return NULL
            else:
                u.has_greeks = True
                if walk_greeks(p, p + n, depth - 1, u.greeks) == NULL:
                    return NULL
            p += n
        elif tag == 0x20:  # 4 vtt, int64
            p = read_int64(p, end, &u.vtt)
        elif tag == 0x29:  # 5 oi
            p = read_double(p, end, &u.oi)
        elif tag == 0x31:  # 6 iv
            p = read_double(p, end, &u.iv)
        else:
            p = skip_field(p, end, tag, depth)
        if p == NULL:
            return NULL
    return p


cdef cptr walk_full_feed(cptr p, cptr end, int depth, Union* u) noexcept nogil:
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    cdef int member
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x0A or tag == 0x12:  # oneof FullFeedUnion: 1 marketFF, 2 indexFF
            p = read_length(p, end, &n)
            if p == NULL or depth < 1:
                return NULL
            member = tag >> 3
            if u.full_case != member:
                memset(u, 0, sizeof(Union))
                u.full_case = member
            if member == 1:
                if walk_market_ff(p, p + n, depth - 1, u) == NULL:
                    return NULL
            elif walk_index_ff(p, p + n, depth - 1, u) == NULL:
                return NULL
            p += n
        else:
            p = skip_field(p, end, tag, depth)
            if p == NULL:
                return NULL
    return p


cdef cptr walk_feed(cptr p, cptr end, int depth, Entry* e) noexcept nogil:
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    cdef int member
    cdef cptr done
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x0A or tag == 0x12 or tag == 0x1A:  # oneof FeedUnion, cases 1..3
            p = read_length(p, end, &n)
            if p == NULL or depth < 1:
                return NULL
            member = tag >> 3
            if e.feed_case != member:
                memset(&e.u, 0, sizeof(Union))
                e.feed_case = member
            if member == 1:
                done = walk_ltpc(p, p + n, depth - 1, &e.u.ltpc)
            elif member == 2:
                done = walk_full_feed(p, p + n, depth - 1, &e.u)
            else:
                done = walk_first_level(p, p + n, depth - 1, &e.u)
            if done == NULL:
                return NULL
            p += n
        else:  # 4 requestMode, and what this .proto does not know
            p = skip_field(p, end, tag, depth)
            if p == NULL:
                return NULL
    return p


cdef cptr walk_feeds_entry(cptr p, cptr end, int depth, Entry* e) noexcept nogil:
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    memset(e, 0, sizeof(Entry))
    e.key = p
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x0A:  # 1 key, string
            p = read_length(p, end, &n)
            if p == NULL or not valid_utf8(p, n):
                return NULL
            e.key = p
            e.key_len = n
            p += n
        elif tag == 0x12:  # 2 value, Feed (merged where it repeats)
            p = read_length(p, end, &n)
            if p == NULL or depth < 1 or walk_feed(p, p + n, depth - 1, e) == NULL:
                return NULL
            p += n
        else:
            e.dropped = True
            p = skip_field(p, end, tag, depth)
            if p == NULL:
                return NULL
    return p


cdef cptr walk_segment_entry(cptr p, cptr end, int depth, Segment* s) noexcept nogil:
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    cdef uint64_t value = 0
    memset(s, 0, sizeof(Segment))
    s.key = p
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x0A:  # 1 key, string
            p = read_length(p, end, &n)
            if p == NULL or not valid_utf8(p, n):
                return NULL
            s.key = p
            s.key_len = n
            p += n
        elif tag == 0x10:  # 2 value, MarketStatus: an open enum, kept as its int32
            p = read_varint(p, end, &value)
            s.status = <int32_t><uint32_t>value
        else:
            s.dropped = True
            p = skip_field(p, end, tag, depth)
        if p == NULL:
            return NULL
    return p


cdef cptr walk_status_entry(cptr p, cptr end, int depth) noexcept nogil:
    """map<string, StatusInfo> entry: checked, not kept."""
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x0A:
            p = read_length(p, end, &n)
            if p == NULL or not valid_utf8(p, n):
                return NULL
            p += n
        elif tag == 0x12:
            p = walk_submessage(p, end, depth, 2)
        else:
            p = skip_field(p, end, tag, depth)
        if p == NULL:
            return NULL
    return p


cdef bint grow(void** items, Py_ssize_t* capacity, size_t item_size) noexcept nogil:
    cdef Py_ssize_t wanted = capacity[0] * 2 if capacity[0] else 64
    cdef void* moved = realloc(items[0], wanted * item_size)
    if moved == NULL:
        return False
    items[0] = moved
    capacity[0] = wanted
    return True


cdef cptr walk_market_info(cptr p, cptr end, int depth, Frame* f) noexcept nogil:
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return NULL
        if tag == 0x0A or tag == 0x12 or tag == 0x1A:
            # 1 segmentStatus, 2 casMarketStatus, 3 preOpenSessionStatus: map entries
            p = read_length(p, end, &n)
            if p == NULL or depth < 1:
                return NULL
            if tag == 0x0A:
                if f.n_segments == f.cap_segments and not grow(
                    <void**>&f.segments, &f.cap_segments, sizeof(Segment)
                ):
                    f.no_memory = True
                    return NULL
                if walk_segment_entry(p, p + n, depth - 1, &f.segments[f.n_segments]) == NULL:
                    return NULL
                f.n_segments += 1
            elif walk_status_entry(p, p + n, depth - 1) == NULL:
                return NULL
            p += n
        else:
            p = skip_field(p, end, tag, depth)
            if p == NULL:
                return NULL
    return p


cdef bint walk_response(cptr p, cptr end, Frame* f) noexcept nogil:
    """The whole frame into `f`; False where the protobuf runtime would refuse it."""
    cdef uint32_t tag = 0
    cdef Py_ssize_t n = 0
    cdef uint64_t value = 0
    cdef int depth = MAX_DEPTH
    while p < end:
        p = read_tag(p, end, &tag)
        if p == NULL:
            return False
        if tag == 0x12:  # 2 feeds, map<string, Feed>
            p = read_length(p, end, &n)
            if p == NULL:
                return False
            if f.n_entries == f.cap_entries and not grow(
                <void**>&f.entries, &f.cap_entries, sizeof(Entry)
            ):
                f.no_memory = True
                return False
            if walk_feeds_entry(p, p + n, depth - 1, &f.entries[f.n_entries]) == NULL:
                return False
            f.n_entries += 1
            p += n
        elif tag == 0x08:  # 1 type, an open enum
            p = read_varint(p, end, &value)
            f.type = <int32_t><uint32_t>value
        elif tag == 0x18:  # 3 currentTs, int64
            p = read_int64(p, end, &f.current_ts)
        elif tag == 0x22:  # 4 marketInfo
            p = read_length(p, end, &n)
            if p == NULL:
                return False
            f.has_market_info = True
            if walk_market_info(p, p + n, depth - 1, f) == NULL:
                return False
            p += n
        else:
            p = skip_field(p, end, tag, depth)
        if p == NULL:
            return False
    return True


# --- step 2: the ticks, with the reference's merge rules ------------------------------------

cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t q = a / b
    if (a % b != 0) and (a < 0):
        q -= 1
    return q


cdef object tick_time(int64_t ms):
    """A tick time from the feed's epoch milliseconds, exact as Python ints are."""
    if -MS_SAFE <= ms <= MS_SAFE:
        return ms * 1000 - PG_EPOCH
    return (<object>ms) * 1000 - PG_EPOCH_UNIX_US


cdef bint other_day(object before, object now) except -1:
    """True where two tick times fall on different IST dates (or `before` is unusual)."""
    cdef int overflow_a = 0
    cdef int overflow_b = 0
    cdef long long a, b
    if PyLong_CheckExact(before) and PyLong_CheckExact(now):
        a = PyLong_AsLongLongAndOverflow(before, &overflow_a)
        b = PyLong_AsLongLongAndOverflow(now, &overflow_b)
        if (not overflow_a and not overflow_b and -US_SAFE <= a <= US_SAFE
                and -US_SAFE <= b <= US_SAFE):
            return floor_div(a + IST_OFFSET_US, DAY_US) != floor_div(b + IST_OFFSET_US, DAY_US)
    cdef object offset = IST_OFFSET_US
    cdef object day = DAY_US
    return bool((before + offset) // day != (now + offset) // day)


cdef inline object as_float(double value, tuple prev, int column):
    """`value` as a float object: the one `prev` holds in `column` where that is the same
    float, bit for bit and not NaN, which saves making one now and freeing one later.

    Which object holds a value is invisible to the merge rules: the duplicate test compares
    with ==, and only NaN (never reused here) tells == from `is`.
    """
    cdef object old
    cdef double was
    if prev is not None:
        old = <object>PyTuple_GET_ITEM(prev, column)
        if PyFloat_CheckExact(old):
            was = PyFloat_AS_DOUBLE(old)
            if value == value and memcmp(&was, &value, sizeof(double)) == 0:
                return old
    return value


cdef inline object as_int(int64_t value, tuple prev, int column):
    """`value` as an int object, `prev`'s where it holds the same (see as_float)."""
    cdef object old
    cdef int overflow = 0
    if prev is not None:
        old = <object>PyTuple_GET_ITEM(prev, column)
        if PyLong_CheckExact(old) and PyLong_AsLongLongAndOverflow(old, &overflow) == value:
            if not overflow:
                return old
    return value


cdef object trade_tick(
    object key, LTPC* l, bint with_ltq, tuple prev, object feed_ts, object received_at
):
    """A tick of the LTPC alone (ltpc mode, index): these feeds carry no other column."""
    cdef object ltq = None
    if l.ltt == 0:
        return None
    if with_ltq:
        ltq = as_int(l.ltq, prev, C_LTQ)
    return (
        key, tick_time(l.ltt), as_float(l.ltp, prev, C_LTP), ltq, None, None,
        as_float(l.cp, prev, C_CP),
        None, None, None, None, None,
        None, None, None, None,
        None, None, None, None, None,
        feed_ts, received_at,
    )


cdef inline object kept_or(double sent, tuple prev, int column):
    """`sent if sent != 0 or kept is None else kept`: a conflated frame's 0 is "not sent"."""
    cdef object kept = <object>PyTuple_GET_ITEM(prev, column)
    if sent != 0 or kept is None:
        return as_float(sent, prev, column)
    return kept


cdef object book_tick(
    object key, Union* u, bint market, tuple prev, object feed_ts, object received_at
):
    """A tick of a feed with depth (full, option_greeks), omitted parts taken from `prev`.

    The reference's _book_tick, rule for rule; `market` is full mode, whose feed carries atp,
    tbq and tsq (option_greeks' does not: they stay None).
    """
    cdef object ts, ltp, ltq, cp, vtt, volume_delta, prev_vtt
    cdef object bid_price, bid_qty, ask_price, ask_qty, delta, theta, gamma, vega, rho
    cdef object atp, oi, iv, tbq, tsq
    cdef int64_t pv
    cdef int overflow = 0
    if u.ltpc.ltt != 0:
        ts = tick_time(u.ltpc.ltt)
        ltp = as_float(u.ltpc.ltp, prev, C_LTP)
        ltq = as_int(u.ltpc.ltq, prev, C_LTQ)
        cp = as_float(u.ltpc.cp, prev, C_CP)
    elif prev is not None:  # a depth- or greeks-only change: the last trade still stands
        ts = prev[C_TS]
        ltp = prev[C_LTP]
        ltq = prev[C_LTQ]
        cp = prev[C_CP]
    else:
        return None
    if u.has_quote:
        bid_price = as_float(u.quote.bid_p, prev, C_BID_PRICE)
        bid_qty = as_int(u.quote.bid_q, prev, C_BID_PRICE + 1)
        ask_price = as_float(u.quote.ask_p, prev, C_BID_PRICE + 2)
        ask_qty = as_int(u.quote.ask_q, prev, C_BID_PRICE + 3)
    if u.has_greeks:
        delta = as_float(u.greeks[0], prev, C_DELTA)
        theta = as_float(u.greeks[1], prev, C_DELTA + 1)
        gamma = as_float(u.greeks[2], prev, C_DELTA + 2)
        vega = as_float(u.greeks[3], prev, C_DELTA + 3)
        rho = as_float(u.greeks[4], prev, C_DELTA + 4)
    if prev is None or other_day(prev[C_TS], ts):
        # Not watched before, or from another IST day: nothing of `prev` is merged.
        vtt = as_int(u.vtt, prev, C_VTT)
        volume_delta = 0 if prev is None else vtt
        if not u.has_quote:
            bid_price = bid_qty = ask_price = ask_qty = None
        if not u.has_greeks:
            delta = theta = gamma = vega = rho = None
        if market:
            atp = as_float(u.atp, prev, C_ATP)
            tbq = as_float(u.tbq, prev, C_TBQ)
            tsq = as_float(u.tsq, prev, C_TSQ)
        else:
            atp = tbq = tsq = None
        return (
            key, ts, ltp, ltq, vtt, volume_delta, cp, atp,
            as_float(u.oi, prev, C_OI), as_float(u.iv, prev, C_IV), tbq, tsq,
            bid_price, bid_qty, ask_price, ask_qty,
            delta, theta, gamma, vega, rho,
            feed_ts, received_at,
        )
    # The same day: 0 counts as "not sent" where there is a value to keep.
    prev_vtt = prev[C_VTT]
    if prev_vtt is None:
        vtt = u.vtt
        volume_delta = 0  # the previous tick had no vtt (ltpc mode): what traded is unknown
    elif PyLong_CheckExact(prev_vtt):
        pv = PyLong_AsLongLongAndOverflow(prev_vtt, &overflow)
        if overflow:  # an int past int64 (only a seeded row could hold one)
            vtt = u.vtt
            if not u.vtt:
                vtt = prev_vtt
            volume_delta = vtt if vtt < prev_vtt else vtt - prev_vtt
        elif u.vtt == 0 or u.vtt == pv:
            vtt = prev_vtt
            volume_delta = 0
        elif u.vtt < pv:
            vtt = u.vtt
            volume_delta = vtt  # the counter restarted
        elif pv >= 0 or u.vtt <= INT64_MAX + pv:
            vtt = u.vtt
            volume_delta = u.vtt - pv
        else:
            vtt = u.vtt
            volume_delta = vtt - prev_vtt
    else:  # not an int: the reference's expressions as they are
        vtt = u.vtt
        if not u.vtt:
            vtt = prev_vtt
        volume_delta = vtt if vtt < prev_vtt else vtt - prev_vtt
    if market:
        atp = kept_or(u.atp, prev, C_ATP)
        tbq = kept_or(u.tbq, prev, C_TBQ)
        tsq = kept_or(u.tsq, prev, C_TSQ)
    else:
        atp = tbq = tsq = None
    oi = kept_or(u.oi, prev, C_OI)
    iv = kept_or(u.iv, prev, C_IV)
    if not u.has_quote:
        bid_price, bid_qty = prev[C_BID_PRICE], prev[C_BID_PRICE + 1]
        ask_price, ask_qty = prev[C_BID_PRICE + 2], prev[C_BID_PRICE + 3]
    if not u.has_greeks:
        delta, theta, gamma = prev[C_DELTA], prev[C_DELTA + 1], prev[C_DELTA + 2]
        vega, rho = prev[C_DELTA + 3], prev[C_DELTA + 4]
    return (
        key, ts, ltp, ltq, vtt, volume_delta, cp, atp, oi, iv, tbq, tsq,
        bid_price, bid_qty, ask_price, ask_qty,
        delta, theta, gamma, vega, rho,
        feed_ts, received_at,
    )


cdef inline void untrack_if_flat(tuple tick) noexcept:
    """Take a tick out of the cyclic GC's sight when it holds no container, as CPython itself
    does with such tuples at their first collection: ticks are made by the hundred thousand
    and kept in batches, and every collection would otherwise walk them all."""
    cdef Py_ssize_t i
    for i in range(PyTuple_GET_SIZE(tick)):
        if PyType_IS_GC(Py_TYPE(PyTuple_GET_ITEM(tick, i))):  # a possible container
            return
    PyObject_GC_UnTrack(<void*>tick)


cdef bint same_as(tuple tick, tuple prev) except -1:
    """The reference's duplicate test: every column but volume_delta, feed_ts and received_at."""
    cdef Py_ssize_t i
    for i in range(C_TS, C_FEED_TS):
        if i != C_VOLUME_DELTA and not PyObject_RichCompareBool(tick[i], prev[i], Py_EQ):
            return False
    return True


cdef class CompiledFeedDecoder:
    """Turns FeedResponse frames into tick tuples, merging each instrument's last state.

    The same contract as ingest.upstox.decoder.PythonFeedDecoder, compiled. One decoder per
    feed connection (it is not thread-safe).
    """

    cdef InstrumentKeys keys  # the str of each wanted key, made once, and its last tick
    cdef dict _unkept_last  # the last tick of keys past the table's bound
    cdef uint64_t frames  # frames decoded: the number a slot's `met_in` is stamped with
    cdef Frame frame  # the structs of the frame being decoded, their memory kept for the next
    cdef bint busy

    def __cinit__(self):
        memset(&self.frame, 0, sizeof(Frame))

    def __init__(self):
        self.keys = InstrumentKeys()
        self._unkept_last = {}

    @property
    def kept_keys(self):
        """How many instrument keys' str the decoder keeps to hand to every tick of theirs."""
        return len(self.keys)

    def last_ticks(self):
        """key -> the last tick of each instrument: the state omitted fields are merged from."""
        return {**self.keys.last_ticks(), **self._unkept_last}

    def __dealloc__(self):
        free(self.frame.entries)
        free(self.frame.segments)

    def decode(self, frame, received_at_us, wanted=None):
        """Decode one binary frame; `wanted`, when given, is the set of keys to keep.

        `received_at_us` is the clock's Unix-epoch microseconds at receipt. The ticks carry
        tick times (see store.tick_row), converted from it and from the feed's Unix-epoch ms.
        """
        cdef Py_buffer view
        if self.busy:  # from another thread, or from `wanted` itself: the structs are in use
            raise RuntimeError("a FeedDecoder decodes one frame at a time")
        self.busy = True
        try:
            if PyBytes_CheckExact(frame):
                return self._decode(
                    <cptr>PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame), frame,
                    received_at_us, wanted,
                )
            PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
            try:
                return self._decode(<cptr>view.buf, view.len, frame, received_at_us, wanted)
            finally:
                PyBuffer_Release(&view)
        finally:
            self.busy = False

    def seed(self, ticks):
        """Install last known ticks (say the newest row per instrument in the database).

        After a restart the server re-sends its snapshot; with the stored state in place
        that snapshot is recognised as a duplicate, and one that is not carries no volume.
        """
        cdef Py_ssize_t length
        cdef cptr utf8
        cdef KeptKey* slot
        cdef dict seeded = {}
        if self.busy:  # a decode holds pointers into the key table, which this may move
            raise RuntimeError("a FeedDecoder is seeded between frames, not during one")
        seed_last(seeded, ticks)
        for key, tick in seeded.items():  # its state is then found by the very key it is kept by
            utf8 = <cptr>PyUnicode_AsUTF8AndSize(key, &length)
            slot = self.keys.keep(key, utf8, length, fnv1a(utf8, length))
            if slot == NULL:
                self._unkept_last[key] = tick
            else:
                set_last(slot, tick)

    cdef object _decode(
        self, cptr data, Py_ssize_t size, object frame, object received_at_us, object wanted
    ):
        cdef Frame* f = &self.frame
        cdef Entry* e
        cdef Segment* s
        cdef Py_ssize_t i
        cdef Py_ssize_t unwanted = 0
        cdef Py_ssize_t duplicates = 0
        cdef PyObject* found
        cdef KeptKey* slot
        cdef dict unkept_last = self._unkept_last
        cdef list ticks = []
        cdef dict market_status = {}
        cdef set strangers = None  # keys met in this frame that the table does not keep
        cdef object key, tick, feed_ts, received_at, name
        cdef tuple prev
        cdef bint snapshot
        cdef uint64_t key_hash
        cdef uint64_t number
        cdef InstrumentKeys keys = self.keys
        f.n_entries = 0
        f.n_segments = 0
        f.type = 0
        f.current_ts = 0
        f.has_market_info = False
        f.no_memory = False
        if not walk_response(data, data + size, f):
            if f.no_memory:
                raise MemoryError()
            raise _MalformedFrame(frame)

        self.frames += 1
        number = self.frames
        snapshot = f.type == 0  # initial_feed: see the reference's class docstring
        feed_ts = tick_time(f.current_ts) if f.current_ts else None
        received_at = received_at_us - PG_EPOCH_UNIX_US
        # Backwards, so that the last entry of a repeated key is the one taken (as the
        # runtime's map does); the list is turned round at the end.
        for i in range(f.n_entries - 1, -1, -1):
            e = &f.entries[i]
            if e.dropped:
                continue
            key_hash = fnv1a(e.key, e.key_len)
            slot = keys.find(e.key, e.key_len, key_hash)
            if slot != NULL:
                if slot.met_in == number:
                    continue
                slot.met_in = number
                key = <object>slot.key
            else:
                key = PyUnicode_DecodeUTF8(<char*>e.key, e.key_len, NULL)
                if strangers is None:
                    strangers = set()
                elif key in strangers:
                    continue
                strangers.add(key)
            if wanted is not None and key not in wanted:
                unwanted += 1
                continue
            if slot == NULL:
                slot = keys.keep(key, e.key, e.key_len, key_hash)
                if slot != NULL:
                    slot.met_in = number
                    key = <object>slot.key
            if e.feed_case == 0:
                continue
            found = slot.last if slot != NULL else PyDict_GetItem(unkept_last, key)
            if found == NULL:
                prev = None
            elif PyTuple_CheckExact(<object>found) and PyTuple_GET_SIZE(<object>found) == C_COLUMNS:
                prev = <tuple>found
            else:  # seed() and decode() store nothing else; read no further than a tick
                raise TypeError(f"decoder state for {key!r} is not a tick: {<object>found!r}")
            if e.feed_case == 1:
                tick = trade_tick(key, &e.u.ltpc, True, prev, feed_ts, received_at)
            elif e.feed_case == 3:
                tick = book_tick(key, &e.u, False, prev, feed_ts, received_at)
            elif e.u.full_case == 1:
                tick = book_tick(key, &e.u, True, prev, feed_ts, received_at)
            elif e.u.full_case == 2:
                # An index has no last traded quantity (nor depth nor vtt).
                tick = trade_tick(key, &e.u.ltpc, False, prev, feed_ts, received_at)
            else:
                continue
            if tick is None:
                continue
            if snapshot and (<tuple>tick)[C_VOLUME_DELTA]:
                # A snapshot opens a subscription: its vtt rose while nobody listened.
                tick = (<tuple>tick)[:C_VOLUME_DELTA] + (0,) + (<tuple>tick)[C_VOLUME_DELTA + 1:]
            if prev is not None and same_as(<tuple>tick, prev):
                duplicates += 1
                continue
            untrack_if_flat(<tuple>tick)
            if slot != NULL:
                set_last(slot, tick)
            else:
                unkept_last[key] = tick
            ticks.append(tick)
        ticks.reverse()

        if f.has_market_info:
            for i in range(f.n_segments):
                s = &f.segments[i]
                if s.dropped:
                    continue
                key = PyUnicode_DecodeUTF8(<char*>s.key, s.key_len, NULL)
                name = _STATUS.get(s.status)
                market_status[key] = name if name is not None else str(s.status)
        return _DECODED_NEW(
            _DecodedFrame,
            (_KINDS.get(f.type, "unknown"), ticks, market_status, feed_ts, unwanted, duplicates),
        )
