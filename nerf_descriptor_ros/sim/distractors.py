"""Clutter: other objects standing around the target on the table (``SimConfig.distractors``).

Each distractor is a static body (it never moves, not even in a pick's physics, and the arm's
inverse kinematics avoids it as it avoids the table). Whenever the target is placed, the
distractors are set around it: each upright (as its model says, like the target) with a random
yaw, on a ring just outside the target's footprint, at a random bearing where its footprint
overlaps neither the target's nor another distractor's. Where they stand follows from
``distractor_seed`` and the target's position, so the same placement gives the same scene.
The camera's object mask stays the target's alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nerf_descriptor_ros.geometry import rpy_deg_to_matrix, transform_points
from nerf_descriptor_ros.sim.objects import (
    ObjectModelError,
    collision_vertices,
    resolve_object_model,
    set_body_frame_pose,
)
from nerf_descriptor_ros.sim.scene import resting_pose

# Free space between footprints (m), and bearings tried per distractor before it is set farther out.
CLEARANCE_M = 0.02
BEARING_TRIES = 64
_PARKED_X_M = 50.0  # until first placed: far beyond the camera's far clip


@dataclass
class Distractor:
    source: str
    body: int
    vertices: np.ndarray  # collision vertices in the model frame
    T_upright: np.ndarray


def load_distractors(bullet, sources: list[str]) -> list[Distractor]:
    """Static bodies for ``sources`` (URDF or mesh, as the object), parked below the table until placed."""
    loaded = []
    for source in sources:
        model = resolve_object_model(source)
        try:
            if model.kind == "urdf":
                body = bullet.loadURDF(str(model.path), useFixedBase=True)
            else:
                visual = bullet.createVisualShape(bullet.GEOM_MESH, fileName=str(model.path))
                collision = bullet.createCollisionShape(bullet.GEOM_MESH, fileName=str(model.path))
                body = bullet.createMultiBody(
                    baseMass=0.0, baseCollisionShapeIndex=collision, baseVisualShapeIndex=visual
                )
        except Exception as exc:  # pybullet.error says little more than "cannot load"
            raise ObjectModelError(f"distractor {source!r}: pybullet cannot load {model.path}: {exc}") from exc
        T_upright = rpy_deg_to_matrix([0, 0, 0], model.upright_rpy_deg)
        loaded.append(Distractor(source, body, collision_vertices(bullet, body), T_upright))
        set_body_frame_pose(bullet, body, resting_pose(T_upright, loaded[-1].vertices, _PARKED_X_M, 0.0, 0.0))
    return loaded


def place_distractors(bullet, distractors: list[Distractor], target_points: np.ndarray, seed: int) -> None:
    """Set ``distractors`` around the target, whose collision vertices in the base frame are
    ``target_points``; the same ``seed`` and target position give the same places."""
    if not distractors:
        return
    centre = (target_points[:, :2].min(0) + target_points[:, :2].max(0)) / 2
    target_radius = float(np.linalg.norm(target_points[:, :2] - centre, axis=1).max())
    where = (np.round(centre * 1e4).astype(np.int64) % (1 << 32)).tolist()  # 0.1 mm steps
    rng = np.random.default_rng([int(seed) % (1 << 32), *where])
    taken: list[tuple[np.ndarray, float]] = []  # footprint circles already placed (centre, radius)
    for d in distractors:
        yaw = rng.uniform(-np.pi, np.pi)
        T = resting_pose(d.T_upright, d.vertices, 0.0, 0.0, yaw)
        footprint = transform_points(T, d.vertices)[:, :2]
        radius = float(np.linalg.norm(footprint, axis=1).max())  # about its bounding box centre (0, 0)
        ring = target_radius + radius + CLEARANCE_M
        while True:
            bearings = rng.uniform(-np.pi, np.pi, BEARING_TRIES)
            spots = centre + ring * np.stack([np.cos(bearings), np.sin(bearings)], -1)
            free = [s for s in spots if all(np.linalg.norm(s - c) >= radius + r + CLEARANCE_M for c, r in taken)]
            if free:
                break
            ring += radius  # the ring is full: the next one out
        spot = free[0]
        taken.append((spot, radius))
        set_body_frame_pose(bullet, d.body, resting_pose(d.T_upright, d.vertices, spot[0], spot[1], yaw))
