"""A test-side topic inbox: the messages of one topic, with a blocking wait for one that fits."""

import threading
import time


class Inbox:
    """Messages of one topic, newest last."""

    def __init__(self, node, msg_type, topic, qos=10):
        self.messages = []
        self._changed = threading.Condition()
        self.subscription = node.create_subscription(msg_type, topic, self._on_message, qos)

    def _on_message(self, msg):
        with self._changed:
            self.messages.append(msg)
            self._changed.notify_all()

    def wait_for(self, predicate, timeout=20.0, what="a message"):
        """The newest message for which ``predicate`` holds, waiting up to ``timeout`` s for one."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in self.messages if predicate(m)]
                if found:
                    return found[-1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {what} within {timeout} s")
                self._changed.wait(remaining)
