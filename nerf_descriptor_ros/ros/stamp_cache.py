"""Messages of one stream keyed by their header stamp, for pairing streams by a frame's stamp."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

from nerf_descriptor_ros.ros.conversions import stamp_to_ns


class StampedCache:
    """The newest ``size`` messages of one topic by stamp (ns); the first received leaves first.

    Not thread-safe on its own: a node guards it with the lock of the state it belongs to.
    """

    def __init__(self, size: int = 64):
        self.size = size
        self.by_stamp: OrderedDict[int, object] = OrderedDict()

    def add(self, msg) -> None:
        self.by_stamp[stamp_to_ns(msg.header.stamp)] = msg
        while len(self.by_stamp) > self.size:
            self.by_stamp.popitem(last=False)

    def get(self, stamp_ns: int):
        return self.by_stamp.get(stamp_ns)

    def __contains__(self, stamp_ns: int) -> bool:
        return stamp_ns in self.by_stamp

    def __len__(self) -> int:
        return len(self.by_stamp)

    def __iter__(self) -> Iterator[int]:
        """The stamps held, in the order received."""
        return iter(self.by_stamp)

    def wait_for(
        self, stamp_ns: int, condition: threading.Condition, timeout_s: float, keep_waiting: Callable[[], bool]
    ):
        """The message stamped ``stamp_ns``, waiting up to ``timeout_s`` for it while
        ``keep_waiting()``; None if it does not come. The caller holds ``condition`` (the lock of
        this cache), which whoever adds messages notifies."""
        deadline = time.monotonic() + timeout_s
        while stamp_ns not in self.by_stamp and keep_waiting():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            condition.wait(remaining)
        return self.by_stamp.get(stamp_ns)

    def newest_stamp(self) -> int | None:
        return max(self.by_stamp, default=None)

    def newest_after(self, stamp_ns: int):
        later = [ns for ns in self.by_stamp if ns > stamp_ns]
        return self.by_stamp[max(later)] if later else None
