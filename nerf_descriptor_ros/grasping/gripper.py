"""The parallel gripper's geometry, as configuration: what a grasp sampler needs to know about it.

The defaults are the Franka Hand on the Panda as pybullet_data's ``franka_panda/panda.urdf``
models it (the simulator's robot), in its ``panda_hand`` frame: z along the approach, y the
direction the fingers move (``panda_finger_joint1``'s axis), x across the fingers.

* ``max_opening_m`` 0.08: ``panda_finger_joint1`` and ``2`` each open to 0.04 (their ``<limit
  upper>``), in opposite directions.
* ``finger_width_m`` 0.021, ``finger_thickness_m`` 0.0264, ``finger_length_m`` 0.0538: the
  bounding box of ``meshes/collision/finger.obj`` (x -0.0105..0.0105, y -0.0001..0.0264 from
  the inner face outwards, z 0.0001..0.0538; towards the tip the finger narrows to a 0.0175 x
  0.0143 pad, so the box is on the safe side).
* ``finger_base_m`` 0.0584: the finger joints' ``<origin>`` on ``panda_hand``; the fingertips
  are thus 0.0584 + 0.0538 = 0.1122 from the hand's base (the flange).
* ``tcp_offset_m`` 0.1034: Franka's documented flange-to-TCP distance, which the simulator uses
  too (``sim/scene.py``'s ``TCP_IN_HAND_M``; the URDF's ``panda_grasptarget`` sits at 0.105). The
  TCP is therefore 0.0088 short of the fingertips.
* ``palm_size_m`` (0.0632, 0.2044, 0.0919) and ``palm_front_m`` 0.066: the bounding box of
  ``meshes/collision/hand.obj`` (x +-0.0316, y -0.104..0.1004, z -0.0259..0.066); its face at
  z = 0.066 is the one the fingers stick out of.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nerf_descriptor_ros.config import ConfigError, described


@dataclass
class GripperConfig:
    max_opening_m: float = described(0.08, "the gripper's widest opening between the finger pads (m)")
    finger_width_m: float = described(
        0.021, "a finger's extent across the fingers, perpendicular to the closing and approach directions (m)"
    )
    finger_thickness_m: float = described(0.0264, "a finger's extent along the closing direction (m)")
    finger_length_m: float = described(0.0538, "a finger's extent along the approach, from its base to its tip (m)")
    finger_base_m: float = described(
        0.0584, "from the hand's base (flange) to the fingers' base along the approach (m)"
    )
    tcp_offset_m: float = described(
        0.1034, "from the hand's base (flange) to the tool centre point along the approach (m)"
    )
    palm_size_m: tuple[float, float, float] = described(
        (0.0632, 0.2044, 0.0919),
        "the hand's (palm's) box: across the fingers, along the closing direction, along the approach (m)",
    )
    palm_front_m: float = described(
        0.066, "from the hand's base (flange) to the palm's face the fingers stick out of, along the approach (m)"
    )

    def __post_init__(self):
        scalars = ("max_opening_m", "finger_width_m", "finger_thickness_m", "finger_length_m", "tcp_offset_m")
        for name in scalars + ("palm_front_m",):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}: must be a finite number > 0, got {value!r}")
        if not (isinstance(self.finger_base_m, (int, float)) and math.isfinite(self.finger_base_m)):
            raise ConfigError(f"finger_base_m: must be a finite number, got {self.finger_base_m!r}")
        if len(self.palm_size_m) != 3 or not all(math.isfinite(v) and v > 0 for v in self.palm_size_m):
            raise ConfigError(f"palm_size_m: must be three finite numbers > 0, got {self.palm_size_m!r}")
        if not self.finger_base_m <= self.tcp_offset_m <= self.fingertip_m:
            raise ConfigError(
                f"tcp_offset_m: the TCP must lie along the fingers (finger_base_m {self.finger_base_m} .. "
                f"finger_base_m + finger_length_m {self.fingertip_m}), got {self.tcp_offset_m}"
            )
        if self.palm_front_m >= self.tcp_offset_m:
            raise ConfigError(
                f"palm_front_m: the palm must end before the TCP ({self.tcp_offset_m}), got {self.palm_front_m}"
            )

    @property
    def fingertip_m(self) -> float:
        """From the hand's base to the fingertips along the approach (m)."""
        return self.finger_base_m + self.finger_length_m

    @property
    def tip_past_tcp_m(self) -> float:
        """How far the fingertips reach past the TCP along the approach (m)."""
        return self.fingertip_m - self.tcp_offset_m


@dataclass
class Box:
    """A box in the TCP frame: centre (3,) (or (..., 3), one per pose), half extents (3,) along
    the TCP's axes."""

    centre: np.ndarray
    half: np.ndarray


def gripper_boxes(gripper: GripperConfig, opening_m: float) -> dict[str, Box]:
    """The hand's parts as boxes in the TCP frame (+z approach, +y closing, fingers ``opening_m``
    apart): ``finger_neg`` (at -y), ``finger_pos`` (at +y) and ``palm``."""
    tip = gripper.tip_past_tcp_m
    finger_y = opening_m / 2 + gripper.finger_thickness_m / 2
    finger_half = np.array([gripper.finger_width_m / 2, gripper.finger_thickness_m / 2, gripper.finger_length_m / 2])
    finger_z = tip - gripper.finger_length_m / 2
    palm = np.asarray(gripper.palm_size_m, dtype=np.float64)
    palm_z = gripper.palm_front_m - gripper.tcp_offset_m - palm[2] / 2
    return {
        "finger_neg": Box(np.array([0.0, -finger_y, finger_z]), finger_half),
        "finger_pos": Box(np.array([0.0, finger_y, finger_z]), finger_half.copy()),
        "palm": Box(np.array([0.0, 0.0, palm_z]), palm / 2),
    }


def lowest_z(T_base_tcp: np.ndarray, box: Box) -> np.ndarray:
    """The lowest base-frame z of ``box`` (TCP frame) at each pose of ``T_base_tcp`` (..., 4, 4)."""
    R = T_base_tcp[..., :3, :3]
    centre_z = (R[..., 2, :] * box.centre).sum(-1) + T_base_tcp[..., 2, 3]
    return centre_z - (np.abs(R[..., 2, :]) * box.half).sum(-1)


def clear_of_floor(
    T: np.ndarray, opening: np.ndarray, gripper: GripperConfig, floor_z: float, grasp_depth_m: float | np.ndarray = 0.0
) -> np.ndarray:
    """Whether each hand (TCP poses ``T`` (N, 4, 4), fingers ``opening`` (N,) apart) clears
    ``floor_z``; where the fingertips would not, the TCP in ``T`` is moved back along the approach
    (in place), as far as the grasp centre, ``grasp_depth_m`` short of the TCP along the
    approach, may stay between the pads (``tip_past_tcp_m`` past the TCP). The table rule of every
    grasp planner."""
    lowest = np.full(len(T), np.inf)
    for name, box in gripper_boxes(gripper, 0.0).items():  # the fingers shut ...
        centre = np.repeat(box.centre[None], len(T), 0)
        if name != "palm":  # ... then opened to each candidate's opening
            centre[:, 1] += np.sign(box.centre[1]) * opening / 2
        lowest = np.minimum(lowest, lowest_z(T, Box(centre, box.half)))
    approach_z = T[:, 2, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        back = np.where(lowest < floor_z, (floor_z - lowest) / approach_z, 0.0)  # <= 0 when feasible
    reach = gripper.tip_past_tcp_m + grasp_depth_m
    clear = (lowest >= floor_z) | ((approach_z < -1e-9) & (back >= -reach - 1e-12))
    shift = np.where(clear, np.minimum(back, 0.0), 0.0)
    T[:, :3, 3] += shift[:, None] * T[:, :3, 2]
    return clear
