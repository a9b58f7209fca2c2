# Included by _fastdecode.pyx: the decoder's one str per instrument key, and its state.
#
# A frame names each instrument by its key's UTF-8 bytes. Decoding them into a new str for
# every tick made each tick's key a stranger to every dict it then met (the decoder's state,
# the subscriptions it is tested against, the latest-tick cache, the forming bars, both
# published tables' slots): each lookup hashed the new str and compared it with the stored
# key byte by byte, and every queued tick held its own copy. Here the bytes find the str made
# the first time, so the key is the very object the dicts hold, its hash already computed.
# Each is kept interned, as the client interns the keys it subscribes, so that the test of
# every tick against those finds it by identity too. Keys are kept only once the decoder's
# caller has wanted them (a flood of strangers keeps nothing), and at most MAX_KEPT_KEYS of
# them: past that a key is decoded afresh each time, as before, which costs time and never
# gives a different answer.
#
# The slot that finds a key's str also holds the instrument's last tick and the frame it was
# last met in: the decoder's merge state and its test for a key repeated within a frame cost
# no dict or set of their own (four hash lookups a tick fewer, issue 21).

from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdlib cimport calloc, malloc
from sys import intern as _intern

cdef enum:
    C_MAX_KEPT_KEYS = 1 << 17  # far above Upstox's subscription limits
    FIRST_CAPACITY = 1 << 10  # slots; a power of two, kept at most half full

MAX_KEPT_KEYS = C_MAX_KEPT_KEYS  # the bound, for the tests

cdef struct KeptKey:
    uint64_t hash
    PyObject* key  # a str, owned; NULL where the slot is empty
    char* utf8  # a copy of the bytes it was decoded from
    Py_ssize_t length
    PyObject* last  # the instrument's last tick, owned; NULL before its first
    uint64_t met_in  # the number of the frame that last named it (0: none yet)


cdef inline uint64_t fnv1a(cptr data, Py_ssize_t length) noexcept nogil:
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(length):
        h = (h ^ data[i]) * 1099511628211ULL
    return h


cdef class InstrumentKeys:
    """The str of each instrument key seen and wanted, found from its bytes (open addressing,
    linear probing)."""

    cdef KeptKey* slots
    cdef Py_ssize_t capacity
    cdef Py_ssize_t count

    def __cinit__(self):
        self.slots = <KeptKey*>calloc(FIRST_CAPACITY, sizeof(KeptKey))
        if self.slots == NULL:
            raise MemoryError()
        self.capacity = FIRST_CAPACITY

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.slots == NULL:
            return
        for i in range(self.capacity):
            Py_XDECREF(self.slots[i].key)
            Py_XDECREF(self.slots[i].last)
            free(self.slots[i].utf8)
        free(self.slots)

    def __len__(self):
        return self.count

    cdef inline Py_ssize_t _slot(self, cptr data, Py_ssize_t length, uint64_t h) noexcept:
        """The slot holding these bytes, or the empty one where they would go."""
        cdef Py_ssize_t mask = self.capacity - 1
        cdef Py_ssize_t i = <Py_ssize_t>(h & <uint64_t>mask)
        cdef KeptKey* slot
        while True:
            slot = &self.slots[i]
            if slot.key == NULL or (
                slot.hash == h and slot.length == length
                and memcmp(slot.utf8, data, length) == 0
            ):
                return i
            i = (i + 1) & mask

    cdef KeptKey* find(self, cptr data, Py_ssize_t length, uint64_t h) noexcept:
        """The slot of the kept str of these bytes, or NULL. Valid until the next `keep`."""
        cdef KeptKey* slot = &self.slots[self._slot(data, length, h)]
        return NULL if slot.key == NULL else slot

    cdef KeptKey* keep(self, object key, cptr data, Py_ssize_t length, uint64_t h) except? NULL:
        """Keep `key`, the str these bytes decode to, unless the table is full (NULL);
        returns the slot that holds it (its str interned), valid until the next `keep`."""
        cdef KeptKey* slot
        cdef char* utf8
        if self.count >= C_MAX_KEPT_KEYS:
            return NULL
        if (self.count + 1) * 2 > self.capacity:
            self._grow()
        slot = &self.slots[self._slot(data, length, h)]
        if slot.key != NULL:
            return slot
        utf8 = <char*>malloc(length if length else 1)
        if utf8 == NULL:
            raise MemoryError()
        memcpy(utf8, data, length)
        key = _intern(key)
        Py_INCREF(key)
        slot.key = <PyObject*>key
        slot.utf8 = utf8
        slot.length = length
        slot.hash = h
        self.count += 1
        return slot

    def last_ticks(self):
        """key -> last tick of every kept key that has one."""
        cdef Py_ssize_t i
        return {
            <object>self.slots[i].key: <object>self.slots[i].last
            for i in range(self.capacity)
            if self.slots[i].key != NULL and self.slots[i].last != NULL
        }

    cdef int _grow(self) except -1:
        cdef KeptKey* old = self.slots
        cdef Py_ssize_t old_capacity = self.capacity
        cdef Py_ssize_t i
        cdef KeptKey* moved = <KeptKey*>calloc(old_capacity * 2, sizeof(KeptKey))
        if moved == NULL:
            raise MemoryError()
        self.slots = moved
        self.capacity = old_capacity * 2
        for i in range(old_capacity):
            if old[i].key != NULL:
                self.slots[self._slot(<cptr>old[i].utf8, old[i].length, old[i].hash)] = old[i]
        free(old)
        return 0


cdef inline void set_last(KeptKey* slot, object tick) noexcept:
    """Hold `tick` as the slot's last, letting go of the one before."""
    Py_INCREF(tick)
    Py_XDECREF(slot.last)
    slot.last = <PyObject*>tick
