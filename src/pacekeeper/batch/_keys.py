"""A set of 64-bit keys in about 11 bytes each.

A batch must remember every custom_id it has seen (to refuse duplicates) and every one an
earlier run finished (to resume). A Python ``set`` of ints costs about 100 bytes per key, which
is 100 MB for a million lines; this table keeps the same keys in an ``array('Q')`` with open
addressing, at most three quarters full: about 11 bytes a key.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

__all__ = ["KeySet"]

_EMPTY = 0
# At most three keys in four slots: linear probing stays short (2.5 probes to find a key, 8.5
# to miss one, on average), and a million lines take 10.7 MB instead of the 16.8 MB of a
# power-of-two table kept half full.
_SLOTS_PER_KEY_NUM, _SLOTS_PER_KEY_DEN = 4, 3


class KeySet:
    """Keys are non-zero 64-bit ints (0 is stored as 1; with 64-bit hashes the clash is moot).

    >>> keys = KeySet()
    >>> keys.add(12345); keys.add(12345); keys.add(2**64 - 1)
    >>> 12345 in keys, 7 in keys, len(keys)
    (True, False, 2)
    """

    __slots__ = ("_count", "_limit", "_size", "_table")

    def __init__(self, capacity: int = 1024) -> None:
        self._count = 0
        self._allocate(max(16, capacity * _SLOTS_PER_KEY_NUM // _SLOTS_PER_KEY_DEN + 1))

    def _allocate(self, size: int) -> None:
        # array * n fills the table in place: array("Q", bytes(...)) held a zeroed copy of it
        # beside it, twice the table at the peak (34 MB for a million lines).
        self._table = array("Q", (_EMPTY,)) * size
        self._size = size
        self._limit = size * _SLOTS_PER_KEY_DEN // _SLOTS_PER_KEY_NUM

    def _slot(self, key: int) -> int:
        table, size = self._table, self._size
        i = (key ^ (key >> 29)) % size
        while True:
            found = table[i]
            if found in (key, _EMPTY):
                return i
            i += 1
            if i == size:
                i = 0

    def add(self, key: int) -> None:
        key = key or 1
        i = self._slot(key)
        if self._table[i] == _EMPTY:
            self._table[i] = key
            self._count += 1
            if self._count > self._limit:
                self._grow()

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int):
            return False
        key = key or 1
        return self._table[self._slot(key)] == key

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """The table's size in bytes."""
        return self._table.itemsize * self._size

    def __iter__(self) -> Iterator[int]:
        return (key for key in self._table if key != _EMPTY)

    def _grow(self) -> None:
        old = self._table
        self._allocate(2 * self._size)
        for key in old:
            if key != _EMPTY:
                self._table[self._slot(key)] = key

    def __repr__(self) -> str:
        return f"<KeySet {self._count} keys in {self._size} slots>"
