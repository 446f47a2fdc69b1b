"""A subscription its consumer pulls the newest message from, when the consumer is ready for one.

A camera faster than its consumer (the descriptor network) would otherwise wake the executor for
every frame: the wait set rebuilt, the message taken and deserialised, a callback dispatched to a
pool thread, all in Python and under the GIL the consumer needs too, for a frame the next one
overwrites. Here DDS keeps only the newest message (keep-last 1, best effort), the executor never
waits on the subscription (its callback group never executes), and the consumer's own thread
takes the message: a frame dropped costs no Python at all, and only the frame used is deserialised.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rclpy.callback_groups import CallbackGroup
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

NEWEST_ONLY = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
POLL_S = 0.002  # how often a waiting consumer looks for a message: the most latency it adds


class _TakenByTheConsumer(CallbackGroup):
    """Keeps a subscription out of every executor's wait set: only its consumer takes from it."""

    def can_execute(self, entity) -> bool:
        return False

    def beginning_execution(self, entity) -> bool:
        return False

    def ending_execution(self, entity) -> None:
        pass


class NewestMessage:
    """The newest message of ``topic``, taken by :meth:`wait` from the consumer's thread."""

    def __init__(self, node, msg_type, topic: str):
        self._msg_type = msg_type
        # No callback is ever dispatched (see the module docstring), so none goes through the
        # callback boundary; rclpy requires one all the same.
        self._subscription = node.create_subscription(
            msg_type, topic, _never_dispatched, NEWEST_ONLY, callback_group=_TakenByTheConsumer()
        )

    @property
    def subscription(self):
        return self._subscription

    def take(self):
        """The newest message not taken yet, or None."""
        handle = self._subscription.handle
        with handle:  # not destroyed while in use
            taken = handle.take_message(self._msg_type, False)
        return None if taken is None else taken[0]

    def wait(self, stopped: Callable[[], bool]):
        """The next message, waiting for one; None once ``stopped()`` is true."""
        while not stopped():
            msg = self.take()
            if msg is not None:
                return msg
            time.sleep(POLL_S)
        return None


def _never_dispatched(msg) -> None:
    raise RuntimeError("a consumer-pulled subscription's callback ran; its callback group never executes")
