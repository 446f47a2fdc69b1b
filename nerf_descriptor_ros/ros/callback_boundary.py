"""The callback boundary: no request, message or timer tick ends a node.

An exception that escapes an rclpy callback is re-raised out of the executor's spin and ends the
node's process; a service caller then gets no answer at all and an action goal is aborted with an
empty result. Every node therefore registers its callbacks through the functions here, which
catch any ``Exception`` at the boundary:

- a service (:func:`create_service`) answers with a refusal: a fresh response whose ``success`` /
  ``accepted`` field is false and whose ``message`` is the reason in one line (:func:`describe`);
- an action (:func:`create_action_server`) aborts the goal with a result whose ``success`` is
  false and whose ``message`` says why;
- a subscription or timer (:func:`create_subscription`, :func:`create_timer`) logs the failure
  and returns; the next message or tick runs as usual.

Each failure is logged as one line (WARNING for a refused request or goal, ERROR for a message or
tick that failed; the latter at most once per :data:`LOG_PERIOD_S` per callback, counting those
left out) and its traceback at DEBUG (``--ros-args --log-level <node>:=debug`` shows it).
Callbacks are plain functions (not coroutines). Worker threads of a node use :func:`describe`
for the same one-line reasons.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
import traceback
from collections.abc import Callable

from rclpy.action import ActionServer

from nerf_descriptor_ros.errors import NerfDescriptorError

LOG_PERIOD_S = 5.0  # a failing subscription or timer logs at most once per this many seconds
_REFUSAL_FLAGS = ("success", "accepted")  # the boolean field a response or result says yes/no with


def describe(exc: BaseException) -> str:
    """``exc`` in one line: the message of a NerfDescriptorError (written for the user), else
    ``"<Type>: <message>"`` (a bug or an environment failure: the type says which)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, NerfDescriptorError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def refuse(message, reason: str):
    """``message`` (a response or an action result) marked as a refusal with ``reason``; returned."""
    fields = message.get_fields_and_field_types()
    for flag in _REFUSAL_FLAGS:
        if flag in fields:
            setattr(message, flag, False)
    if "message" in fields:
        message.message = reason
    return message


def guard_service(node, name: str, callback: Callable) -> Callable:
    """``callback(request, response)`` that answers a refusal instead of raising."""
    _require_plain_function(callback)

    @functools.wraps(callback)
    def guarded(request, response):
        try:
            answer = callback(request, response)
            if not isinstance(answer, type(response)):
                raise TypeError(f"the callback returned {type(answer).__name__}, not a {type(response).__name__}")
            return answer
        except Exception as exc:
            reason = describe(exc)
            _log(node, exc, f"{name}: refused: {reason}", warning=True)
            return refuse(type(response)(), reason)

    return guarded


def guard_execute(node, name: str, action_type, callback: Callable) -> Callable:
    """An action's ``execute_callback(goal_handle)`` that aborts the goal with the reason instead of raising."""
    _require_plain_function(callback)

    @functools.wraps(callback)
    def guarded(goal_handle):
        try:
            return callback(goal_handle)
        except Exception as exc:
            reason = describe(exc)
            _log(node, exc, f"{name}: goal aborted: {reason}", warning=True)
            try:
                if goal_handle.is_active:  # not already ended by the callback
                    goal_handle.abort()
            except Exception:  # rclpy aborts a goal left active itself
                pass
            return refuse(action_type.Result(), reason)

    return guarded


def guard_callback(node, name: str, callback: Callable) -> Callable:
    """A subscription or timer callback that logs a failure (one line, throttled) instead of raising."""
    _require_plain_function(callback)
    throttle = _Throttle(LOG_PERIOD_S)

    @functools.wraps(callback)
    def guarded(*args):
        try:
            callback(*args)
        except Exception as exc:
            left_out = throttle()
            if left_out is not None:
                more = f" ({left_out} more since the last report)" if left_out else ""
                _log(node, exc, f"{name} failed: {describe(exc)}{more}", warning=False)

    return guarded


def create_service(node, srv_type, name: str, callback: Callable, **kwargs):
    """``node.create_service`` behind the boundary: an exception is answered as a refusal."""
    return node.create_service(srv_type, name, guard_service(node, name, callback), **kwargs)


def create_action_server(node, action_type, name: str, execute_callback: Callable, **kwargs) -> ActionServer:
    """``ActionServer(...)`` behind the boundary: an exception aborts the goal with the reason."""
    return ActionServer(node, action_type, name, guard_execute(node, name, action_type, execute_callback), **kwargs)


def create_subscription(node, msg_type, topic: str, callback: Callable, qos, **kwargs):
    """``node.create_subscription`` behind the boundary: an exception is logged, the message dropped."""
    return node.create_subscription(msg_type, topic, guard_callback(node, topic, callback), qos, **kwargs)


def create_timer(node, period_s: float, callback: Callable, **kwargs):
    """``node.create_timer`` behind the boundary: an exception is logged, the next tick runs."""
    name = f"timer {getattr(callback, '__name__', 'callback')}"
    return node.create_timer(period_s, guard_callback(node, name, callback), **kwargs)


def _require_plain_function(callback: Callable) -> None:
    if inspect.iscoroutinefunction(callback):
        raise TypeError(f"{callback!r} is a coroutine function; the callback boundary wraps plain functions")


def _log(node, exc: Exception, line: str, warning: bool) -> None:
    """The one-line report and the traceback at DEBUG; logging never raises out of the boundary.

    rclpy fixes one severity per call site, hence the two calls below.
    """
    try:
        logger = node.get_logger()
        if warning:
            logger.warning(line)
        else:
            logger.error(line)
        logger.debug("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    except Exception:
        pass  # e.g. the context is already shut down: nothing left to tell


class _Throttle:
    """``None`` while within ``period_s`` of the last report, else how many were left out since it."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self._lock = threading.Lock()
        self._next = -float("inf")
        self._left_out = 0

    def __call__(self) -> int | None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._left_out += 1
                return None
            left_out, self._left_out, self._next = self._left_out, 0, now + self.period_s
            return left_out
