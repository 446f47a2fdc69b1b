"""The object on the table: resolve its model, load it into pybullet, and measure its geometry."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pybullet_data

from ..errors import NerfDescriptorError
from ..geometry import matrix_to_pose, pose_to_matrix, transform_points

MESH_SUFFIXES = (".obj", ".stl")
URDF_SUFFIX = ".urdf"
_MESH_MASS_KG = 0.1  # a light object, so that later physics (grasping) can move it


class ObjectModelError(NerfDescriptorError, ValueError):
    """An object source that cannot be found or loaded."""


@dataclass(frozen=True)
class ObjectModel:
    """Where an object's model comes from: ``source`` as given, ``path`` resolved, ``kind``."""

    source: str
    path: Path
    kind: str  # "urdf" or "mesh"
    scale: float

    @property
    def name(self) -> str:
        """A short name for logs and ground truth, e.g. ``duck_vhacd`` or ``mug``."""
        return self.path.stem


def resolve_object_model(source: str, scale: float = 1.0) -> ObjectModel:
    """Find a URDF or mesh (.obj/.stl) by absolute path or relative to ``pybullet_data``."""
    if not isinstance(source, str) or not source.strip():
        raise ObjectModelError("object source is empty: give a URDF or mesh path")
    if not np.isfinite(scale) or scale <= 0:
        raise ObjectModelError(f"object scale must be a positive number, got {scale}")
    suffix = Path(source).suffix.lower()
    if suffix == URDF_SUFFIX:
        kind = "urdf"
    elif suffix in MESH_SUFFIXES:
        kind = "mesh"
    else:
        raise ObjectModelError(f"object {source!r}: expected a .urdf, .obj or .stl file")
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = Path(pybullet_data.getDataPath()) / path
    if not path.is_file():
        raise ObjectModelError(f"object {source!r} not found (looked for {path}; relative paths "
                               "are taken under pybullet_data)")
    return ObjectModel(source=source, path=path.resolve(), kind=kind, scale=float(scale))


def load_object(bullet, model: ObjectModel) -> int:
    """Create the object body at the origin; return its pybullet id."""
    if model.kind == "urdf":
        try:
            return bullet.loadURDF(str(model.path), globalScaling=model.scale)
        except Exception as exc:  # pybullet.error carries only "Cannot load URDF file."
            raise ObjectModelError(f"pybullet cannot load the URDF {model.path}: {exc}") from exc
    scale = [model.scale] * 3
    try:
        visual = bullet.createVisualShape(bullet.GEOM_MESH, fileName=str(model.path), meshScale=scale)
        collision = bullet.createCollisionShape(bullet.GEOM_MESH, fileName=str(model.path),
                                                meshScale=scale)
    except Exception as exc:
        raise ObjectModelError(f"pybullet cannot load the mesh {model.path}: {exc}") from exc
    if visual < 0 or collision < 0:
        raise ObjectModelError(f"pybullet cannot load the mesh {model.path}")
    return bullet.createMultiBody(baseMass=_MESH_MASS_KG, baseCollisionShapeIndex=collision,
                                  baseVisualShapeIndex=visual)


def _com_to_link(bullet, body: int, link: int) -> np.ndarray:
    """``T_link_com``: the inertial frame pybullet reports poses in, seen from the URDF link frame."""
    position, orientation = bullet.getDynamicsInfo(body, link)[3:5]
    return pose_to_matrix(position, orientation)


def body_frame_pose(bullet, body: int) -> np.ndarray:
    """World pose of the body's URDF base frame (pybullet's base pose is its centre of mass)."""
    position, orientation = bullet.getBasePositionAndOrientation(body)
    return pose_to_matrix(position, orientation) @ np.linalg.inv(_com_to_link(bullet, body, -1))


def set_body_frame_pose(bullet, body: int, T_world_body: np.ndarray) -> None:
    """Place the body so that its URDF base frame is at ``T_world_body``."""
    T_world_com = T_world_body @ _com_to_link(bullet, body, -1)
    position, orientation = matrix_to_pose(T_world_com)
    bullet.resetBasePositionAndOrientation(body, position.tolist(), orientation.tolist())


def collision_vertices(bullet, body: int) -> np.ndarray:
    """Vertices of every collision shape of ``body``, in its URDF base frame (Nx3).

    Used to rest the object exactly on the table and to centre the camera on it; pybullet's own
    AABB is padded by the collision margin.
    """
    T_world_body = body_frame_pose(bullet, body)
    T_body_world = np.linalg.inv(T_world_body)
    chunks = []
    for link in range(-1, bullet.getNumJoints(body)):
        count, vertices = bullet.getMeshData(body, link)
        if count == 0:
            continue
        if link == -1:
            T_world_com = T_world_body @ _com_to_link(bullet, body, -1)
        else:
            state = bullet.getLinkState(body, link, computeForwardKinematics=True)
            T_world_com = pose_to_matrix(state[0], state[1])
        chunks.append(transform_points(T_body_world @ T_world_com, np.asarray(vertices)))
    if not chunks:
        raise ObjectModelError("the object has no collision geometry to place it with")
    return np.concatenate(chunks)
