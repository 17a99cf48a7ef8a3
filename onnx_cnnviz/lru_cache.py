"""A bounded cache: the sessions, specialised graphs and plans a :class:`onnx_cnnviz.Model` keeps.

Each onnxruntime session holds its own graph and buffers, so a long-lived process explaining with many layers, rules
and sizes must not grow without limit: the least recently used entry goes first.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .errors import InputError


class LRUCache:
    """A dict of at most ``capacity`` entries that drops the least recently used one when full.

    Args:
        capacity: the most entries, at least 1.

    Raises:
        InputError: ``capacity`` is not an int of at least 1.
    """

    def __init__(self, capacity: int):
        if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 1:
            raise InputError(f"a cache holds at least one entry; got capacity {capacity!r}.")
        self.capacity = int(capacity)
        self._items: OrderedDict = OrderedDict()

    def get(self, key, build):
        """The entry under ``key``, made with ``build()`` when absent (evicting the least recently used).

        Args:
            key: the key.
            build: makes the entry; called only when it is absent.

        Returns:
            The entry, now the most recently used.

        Example:
            >>> cache = LRUCache(1)
            >>> cache.get("a", lambda: 1), cache.get("b", lambda: 2), cache.keys()
            (1, 2, ['b'])
        """
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = build()
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list:
        """The keys, least recently used first.

        Returns:
            The keys.
        """
        return list(self._items)

    def clear(self) -> None:
        """Drop every entry."""
        self._items.clear()
