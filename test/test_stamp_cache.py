"""StampedCache: the per-stream message caches of the nodes and the demo driver."""

import threading
import time

from std_msgs.msg import Header

from nerf_descriptor_ros.ros.conversions import ns_to_stamp
from nerf_descriptor_ros.ros.stamp_cache import StampedCache


class _Msg:
    def __init__(self, stamp_ns: int):
        self.header = Header(stamp=ns_to_stamp(stamp_ns))


def test_keeps_the_newest_received_messages_by_stamp():
    cache = StampedCache(size=3)
    assert len(cache) == 0 and cache.newest_stamp() is None and cache.newest_after(0) is None
    messages = [_Msg(s) for s in (30, 10, 20, 40)]  # out of stamp order, as streams may arrive
    for msg in messages:
        cache.add(msg)
    assert len(cache) == 3 and 30 not in cache  # the first received left first
    assert list(cache) == [10, 20, 40] and cache.get(20) is messages[2] and cache.get(30) is None
    assert cache.newest_stamp() == 40
    assert cache.newest_after(10) is messages[3] and cache.newest_after(40) is None


def test_wait_for_returns_a_message_that_arrives_and_gives_up_when_told():
    cache, condition = StampedCache(), threading.Condition()

    def add_later():
        time.sleep(0.1)
        with condition:
            cache.add(_Msg(7))
            condition.notify_all()

    threading.Thread(target=add_later).start()
    with condition:
        assert cache.wait_for(7, condition, 5.0, lambda: True) is not None
        started = time.monotonic()
        assert cache.wait_for(8, condition, 5.0, lambda: False) is None  # told not to wait
        assert cache.wait_for(9, condition, 0.1, lambda: True) is None  # the timeout
    assert time.monotonic() - started < 1.0
