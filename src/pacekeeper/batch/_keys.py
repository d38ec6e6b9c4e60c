"""A set of 64-bit keys in about 16 bytes each.

A batch must remember every custom_id it has seen (to refuse duplicates) and every one an
earlier run finished (to resume). A Python ``set`` of ints costs about 100 bytes per key, which
is 100 MB for a million lines; this table keeps the same keys in an ``array('Q')`` with open
addressing, so memory stays a small, fixed multiple of the line count.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

__all__ = ["KeySet"]

_EMPTY = 0


class KeySet:
    """Keys are non-zero 64-bit ints (0 is stored as 1; with 64-bit hashes the clash is moot).

    >>> keys = KeySet()
    >>> keys.add(12345); keys.add(12345); keys.add(2**64 - 1)
    >>> 12345 in keys, 7 in keys, len(keys)
    (True, False, 2)
    """

    __slots__ = ("_count", "_mask", "_table")

    def __init__(self, capacity: int = 1024) -> None:
        size = 16
        while size < 2 * capacity:
            size *= 2
        self._table = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._count = 0

    def _slot(self, key: int) -> int:
        table, mask = self._table, self._mask
        i = (key ^ (key >> 29)) & mask
        while True:
            found = table[i]
            if found in (key, _EMPTY):
                return i
            i = (i + 1) & mask

    def add(self, key: int) -> None:
        key = key or 1
        i = self._slot(key)
        if self._table[i] == _EMPTY:
            self._table[i] = key
            self._count += 1
            if 2 * self._count > self._mask:  # keep the table at most half full
                self._grow()

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int):
            return False
        key = key or 1
        return self._table[self._slot(key)] == key

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        return (key for key in self._table if key != _EMPTY)

    def _grow(self) -> None:
        old = self._table
        self._table = array("Q", bytes(16 * len(old)))
        self._mask = 2 * len(old) - 1
        for key in old:
            if key != _EMPTY:
                self._table[self._slot(key)] = key

    def __repr__(self) -> str:
        return f"<KeySet {self._count} keys in {len(self._table)} slots>"
