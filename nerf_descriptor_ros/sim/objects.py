"""The object on the table: resolve its model, load it into pybullet, and measure its geometry."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pybullet_data

from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import matrix_to_pose, pose_to_matrix, rpy_deg_to_matrix, transform_points

MESH_SUFFIXES = (".obj", ".stl")
URDF_SUFFIX = ".urdf"
_MESH_MASS_KG = 0.1  # a light object, so that later physics (grasping) can move it
_MIN_EXTENT_M = 1e-6


class ObjectModelError(NerfDescriptorError, ValueError):
    """An object source that cannot be found or loaded."""


# pybullet_data models whose meshes are modelled with y up (facts about those files): turning them
# +90 deg about x stands them upright, e.g. the duck's height grows from 0.058 to 0.077 m and the
# teddy's from 0.063 to 0.093 m; the Stanford bunny sits on its paws. Every other model is taken as
# modelled, z up (the URDF convention).
_Y_UP_PYBULLET_MODELS = frozenset(
    {
        "duck.obj",
        "duck_vhacd.obj",
        "duck_vhacd.urdf",
        "teddy2_VHACD_CHs.obj",
        "teddy_vhacd.urdf",
        "teddy_large.urdf",
        "bunny.obj",
    }
)
_Y_UP_TO_Z_UP_RPY_DEG = (90.0, 0.0, 0.0)


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

    @property
    def upright_rpy_deg(self) -> tuple[float, float, float]:
        """Roll, pitch, yaw (deg) that stand the model upright: known y-up pybullet_data models are
        turned, everything else is used as modelled."""
        data = Path(pybullet_data.getDataPath()).resolve()
        if self.path.is_relative_to(data) and self.path.relative_to(data).as_posix() in _Y_UP_PYBULLET_MODELS:
            return _Y_UP_TO_Z_UP_RPY_DEG
        return (0.0, 0.0, 0.0)


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
        raise ObjectModelError(
            f"object {source!r} not found (looked for {path}; relative paths are taken under pybullet_data)"
        )
    return ObjectModel(source=source, path=path.resolve(), kind=kind, scale=float(scale))


def load_object(bullet, model: ObjectModel) -> int:
    """Create the object body at the origin, colliding as it looks (:mod:`collision_fidelity`);
    return its pybullet id."""
    # Imported here: collision_fidelity builds on this module's readers.
    from nerf_descriptor_ros.sim.collision_fidelity import faithful_mesh_collision, faithful_urdf

    if model.kind == "urdf":
        urdf = faithful_urdf(model)
        try:
            return bullet.loadURDF(str(urdf), globalScaling=model.scale)
        except Exception as exc:  # pybullet.error carries only "Cannot load URDF file."
            raise ObjectModelError(f"pybullet cannot load the URDF {model.path}: {exc}") from exc
    scale = [model.scale] * 3
    collision_file = faithful_mesh_collision(model)
    try:
        visual = bullet.createVisualShape(bullet.GEOM_MESH, fileName=str(model.path), meshScale=scale)
        collision = bullet.createCollisionShape(bullet.GEOM_MESH, fileName=str(collision_file), meshScale=scale)
    except Exception as exc:
        raise ObjectModelError(f"pybullet cannot load the mesh {model.path}: {exc}") from exc
    if visual < 0 or collision < 0:
        raise ObjectModelError(f"pybullet cannot load the mesh {model.path}")
    return bullet.createMultiBody(
        baseMass=_MESH_MASS_KG, baseCollisionShapeIndex=collision, baseVisualShapeIndex=visual
    )


def _com_to_link(bullet, body: int, link: int) -> np.ndarray:
    """``T_link_com``: the inertial frame pybullet reports poses in, seen from the URDF link frame."""
    position, orientation = bullet.getDynamicsInfo(body, link)[3:5]
    return pose_to_matrix(position, orientation)


def body_frame_pose(bullet, body: int) -> np.ndarray:
    """World pose of the body's URDF base frame (pybullet's base pose is its centre of mass)."""
    position, orientation = bullet.getBasePositionAndOrientation(body)
    return pose_to_matrix(position, orientation) @ np.linalg.inv(_com_to_link(bullet, body, -1))


def body_center_of_mass(bullet, body: int) -> np.ndarray:
    """The base link's centre of mass in its URDF frame (what pybullet's physics uses)."""
    return _com_to_link(bullet, body, -1)[:3, 3]


def set_body_frame_pose(bullet, body: int, T_world_body: np.ndarray) -> None:
    """Place the body so that its URDF base frame is at ``T_world_body``."""
    T_world_com = T_world_body @ _com_to_link(bullet, body, -1)
    position, orientation = matrix_to_pose(T_world_com)
    bullet.resetBasePositionAndOrientation(body, position.tolist(), orientation.tolist())


def collision_vertices(bullet, body: int) -> np.ndarray:
    """Vertices of every collision shape of ``body``, in its URDF base frame (Nx3).

    Used to rest the object exactly on the table and to centre the camera on it; pybullet's own
    AABB is padded by the collision margin. Meshes come from pybullet (the shapes it collides
    with), primitives are generated from their dimensions.
    """
    T_world_body = body_frame_pose(bullet, body)
    T_body_world = np.linalg.inv(T_world_body)
    chunks = []
    for link in range(-1, bullet.getNumJoints(body)):
        shapes = bullet.getCollisionShapeData(body, link)
        if not shapes:
            continue
        if link == -1:
            T_world_com = T_world_body @ _com_to_link(bullet, body, -1)
        else:
            state = bullet.getLinkState(body, link, computeForwardKinematics=True)
            T_world_com = pose_to_matrix(state[0], state[1])
        # Shape data and mesh vertices are both given in the link's inertial (centre of mass) frame.
        points = [_primitive_vertices(bullet, shape) for shape in shapes if shape[2] != bullet.GEOM_MESH]
        meshes = [shape for shape in shapes if shape[2] == bullet.GEOM_MESH]
        if meshes:
            points.append(_link_mesh_vertices(bullet, body, link, meshes))
        chunks.append(transform_points(T_body_world @ T_world_com, np.concatenate(points)))
    if not chunks:
        raise ObjectModelError("the object has no collision geometry to place it with")
    vertices = np.concatenate(chunks)
    if not np.all(np.isfinite(vertices)) or np.ptp(vertices, axis=0).max() < _MIN_EXTENT_M:
        raise ObjectModelError(
            "the object's collision geometry is broken (no extent, or coordinates that are not numbers)"
        )
    return vertices


# Points per half circle of a generated sphere, cylinder or capsule: the lowest point of any
# orientation is then within 0.3 % of the radius of the true surface.
_ROUND_SEGMENTS = 32


def _primitive_vertices(bullet, shape) -> np.ndarray:
    """Points spanning a box, sphere, cylinder or capsule (z is their axis), in the link's
    inertial frame."""
    geometry, dimensions = shape[2], np.asarray(shape[3], dtype=np.float64)
    if geometry == bullet.GEOM_BOX:  # dimensions: full extents
        corners = np.array(np.meshgrid([-0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5])).reshape(3, -1).T
        local = corners * dimensions
    elif geometry == bullet.GEOM_SPHERE:  # dimensions[0]: radius
        local = _sphere_points(dimensions[0])
    elif geometry == bullet.GEOM_CYLINDER:  # dimensions: length, radius
        ring = _circle_points(dimensions[1])
        local = np.concatenate([ring + [0, 0, dimensions[0] / 2], ring - [0, 0, dimensions[0] / 2]])
    elif geometry == bullet.GEOM_CAPSULE:  # dimensions: length between the caps' centres, radius
        ball = _sphere_points(dimensions[1])
        local = np.concatenate([ball + [0, 0, dimensions[0] / 2], ball - [0, 0, dimensions[0] / 2]])
    else:
        raise ObjectModelError(
            f"collision shape type {geometry} (plane or height field) is not an object that can rest on the table"
        )
    return transform_points(pose_to_matrix(shape[5], shape[6]), local)


def _circle_points(radius: float) -> np.ndarray:
    """Points around a circle in the xy plane."""
    azimuth = np.linspace(0.0, 2 * np.pi, 2 * _ROUND_SEGMENTS, endpoint=False)
    return radius * np.stack([np.cos(azimuth), np.sin(azimuth), np.zeros_like(azimuth)], -1)


def _sphere_points(radius: float) -> np.ndarray:
    """A latitude-longitude grid on a sphere, poles and equator included."""
    rings = []
    for polar in np.linspace(0.0, np.pi, _ROUND_SEGMENTS + 1):
        rings.append(_circle_points(radius * np.sin(polar)) + [0.0, 0.0, radius * np.cos(polar)])
    return np.concatenate(rings)


def _link_mesh_vertices(bullet, body: int, link: int, meshes) -> np.ndarray:
    """The vertices of a link's collision meshes, in its inertial frame.

    pybullet gives them for convex meshes (every body with mass); static concave meshes it does
    not, so those are read from their files.
    """
    count, vertices = bullet.getMeshData(body, link)
    if count > 0:
        return np.asarray(vertices, dtype=np.float64)
    chunks = []
    for shape in meshes:
        path = Path(shape[4].decode(errors="replace"))
        local = read_mesh_vertices(path) * np.asarray(shape[3], dtype=np.float64)  # mesh scale
        chunks.append(transform_points(pose_to_matrix(shape[5], shape[6]), local))
    return np.concatenate(chunks)


def read_mesh_vertices(path: Path) -> np.ndarray:
    """The vertices (Nx3) of a Wavefront .obj or an STL (binary or ASCII) file."""
    return read_mesh_triangles(path)[0]


def read_mesh_triangles(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices Nx3, triangles Mx3 vertex indices) of a Wavefront .obj (polygons split into fans)
    or an STL (binary or ASCII) file. Written here because open3d's reader drops an .obj's quads."""
    if not path.is_file():
        raise ObjectModelError(f"mesh {str(path)!r} cannot be read for its geometry")
    suffix = path.suffix.lower()
    try:
        if suffix == ".obj":
            vertices, triangles = _obj_triangles(path)
        elif suffix == ".stl":
            vertices = _stl_vertices(path.read_bytes())
            triangles = np.arange(len(vertices) // 3 * 3).reshape(-1, 3)
        else:
            raise ObjectModelError(f"mesh {path}: only .obj and .stl files can be read")
    except (ValueError, IndexError) as exc:
        raise ObjectModelError(f"mesh {path} cannot be parsed: {exc}") from exc
    if len(vertices) == 0:
        raise ObjectModelError(f"mesh {path} has no vertices")
    return vertices, triangles


def model_visual_mesh(model: ObjectModel) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, triangles) of what the camera sees of ``model``, in its URDF (or mesh) frame at
    its scale: a mesh object's file, or a URDF's visual meshes with their origins and scales.
    ObjectModelError for a URDF whose visuals are on several links or are not .obj/.stl files."""
    if model.kind == "mesh":
        vertices, triangles = read_mesh_triangles(model.path)
        return vertices * model.scale, triangles
    try:
        links = ET.parse(model.path).getroot().findall("link")
    except ET.ParseError as exc:
        raise ObjectModelError(f"{model.path}: not XML ({exc})") from exc
    visuals = [visual for link in links for visual in link.findall("visual")]
    if sum(1 for link in links if link.find("visual") is not None) != 1:
        raise ObjectModelError(f"{model.path}: the visual geometry is not on exactly one link")
    parts = []
    for visual in visuals:
        mesh = visual.find("geometry/mesh")
        name = mesh.get("filename", "") if mesh is not None else ""
        if not name or "://" in name or Path(name).suffix.lower() not in MESH_SUFFIXES:
            raise ObjectModelError(f"{model.path}: a visual is not an .obj or .stl file beside the URDF")
        origin = visual.find("origin")
        xyz = [float(v) for v in (origin.get("xyz", "0 0 0") if origin is not None else "0 0 0").split()]
        rpy = [float(v) for v in (origin.get("rpy", "0 0 0") if origin is not None else "0 0 0").split()]
        vertices, triangles = read_mesh_triangles(model.path.parent / name)
        vertices = vertices * np.array(mesh.get("scale", "1 1 1").split(), float)
        parts.append((transform_points(rpy_deg_to_matrix(xyz, np.degrees(rpy)), vertices), triangles))
    offsets = np.cumsum([0] + [len(v) for v, _ in parts])[:-1]
    vertices = np.concatenate([v for v, _ in parts]) * model.scale
    return vertices, np.concatenate([t + offset for (_, t), offset in zip(parts, offsets)])


def _obj_triangles(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows, triangles = [], []
    with path.open(errors="replace") as lines:
        for line in lines:
            words = line.split()
            if not words:
                continue
            if words[0] == "v":
                rows.append(words[1:4])
            elif words[0] == "f":
                # "f 1/2/3 4/5/6 ...": vertex numbers count from 1, negative ones back from the last.
                corners = [int(word.split("/")[0]) for word in words[1:]]
                corners = [c - 1 if c > 0 else len(rows) + c for c in corners]
                triangles += [(corners[0], corners[k], corners[k + 1]) for k in range(1, len(corners) - 1)]
    vertices = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError("a face names a vertex that does not exist")
    return vertices, faces


def _stl_vertices(data: bytes) -> np.ndarray:
    triangles = int.from_bytes(data[80:84], "little") if len(data) >= 84 else -1
    if len(data) == 84 + 50 * triangles:  # binary: header, count, 50-byte facets
        facets = np.frombuffer(
            data, dtype=np.dtype([("normal", "<f4", 3), ("corners", "<f4", (3, 3)), ("attribute", "<u2")]), offset=84
        )
        return facets["corners"].reshape(-1, 3).astype(np.float64)
    words = data.decode(errors="replace").split()
    starts = [i + 1 for i, word in enumerate(words) if word == "vertex"]
    return np.asarray([words[i : i + 3] for i in starts], dtype=np.float64).reshape(-1, 3)
