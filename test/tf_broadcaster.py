"""A TF publisher in its own process, as a robot driver and a hand-eye calibration would be.

    python tf_broadcaster.py '{"static": [TRANSFORM...], "dynamic": [TRANSFORM...]}'

TRANSFORM: [stamp_ns, parent, child, [x, y, z], [qx, qy, qz, qw]]. The static transforms go out on
/tf_static at once (latched), the dynamic ones on /tf, in one message, once a subscriber is there; then
it prints "sent" and sends them again every RESEND_S (a subscriber seen in the graph may not be
matched yet, and /tf is volatile) until its stdin closes.
"""

import json
import sys
import threading
import time

import rclpy
from geometry_msgs.msg import TransformStamped
from tf2_ros import StaticTransformBroadcaster, TransformBroadcaster

RESEND_S = 0.2


def transform_msg(stamp_ns: int, parent: str, child: str, xyz, q_xyzw) -> TransformStamped:
    msg = TransformStamped()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id, msg.child_frame_id = parent, child
    t, q = msg.transform.translation, msg.transform.rotation
    t.x, t.y, t.z = map(float, xyz)
    q.x, q.y, q.z, q.w = map(float, q_xyzw)
    return msg


def main() -> None:
    transforms = json.loads(sys.argv[1])
    rclpy.init()
    node = rclpy.create_node("tf_broadcaster")
    StaticTransformBroadcaster(node).sendTransform([transform_msg(*t) for t in transforms["static"]])
    broadcaster = TransformBroadcaster(node)
    deadline = time.monotonic() + 30.0
    while node.count_subscribers("/tf") == 0:  # /tf is volatile: sent before a match means lost
        if time.monotonic() > deadline:
            sys.exit("tf_broadcaster: nobody subscribed to /tf within 30 s")
        time.sleep(0.05)
    dynamic = [transform_msg(*t) for t in transforms["dynamic"]]
    broadcaster.sendTransform(dynamic)
    print("sent", flush=True)
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    while not closed.wait(RESEND_S):
        broadcaster.sendTransform(dynamic)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
