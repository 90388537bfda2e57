"""A small thread-safe map whose entries live a fixed time: caches of what peers serve (DID
documents, verified presentations, credential schemas) that must neither grow without bound
nor outlive their freshness."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class Expiring:
    """Entries live ``ttl`` seconds by ``clock``; past ``max_entries`` the oldest go first."""

    def __init__(self, ttl: float, clock: Callable[[], float], max_entries: int) -> None:
        self.ttl, self.clock, self.max_entries = ttl, clock, max_entries
        self._items: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= self.clock():
                del self._items[key]
                return None
            return item[1]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = (self.clock() + self.ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
