"""Collision shapes that follow what the camera sees.

pybullet collides a moving body with one convex hull per part of its collision mesh. A model
whose collision parts are not convex, or were drawn coarser than its visual mesh, then has solid
matter where the camera sees none: pybullet_data's mug collides as a closed cylinder, so fingers
that reach into the visible cup land on its invisible lid, and a torus's hole is filled. The
simulator is the test bench for grasps planned from what the camera sees, so such an object is
given a collision model made from its visual mesh by V-HACD (pybullet's convex decomposition).
Only a moving body's collision meshes are replaced: primitives (boxes, cylinders, capsules such
as the thin objects' wire segments) and a static body's concave meshes collide exactly as their
author declared them.

An object's collision is taken as faithful when at most :data:`MISMATCH_FRACTION` of its surface
(ray hits from the six axis directions) lies farther than :func:`surface_tolerance_m` (a tenth
of its size) from the visual surface; such objects, and any that cannot be compared (several
links, primitive visuals), load unchanged. Verdicts and decompositions are cached by content in
:func:`cache_dir`, so after the first load the check costs reading the model's files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pybullet
from pybullet_utils.bullet_client import BulletClient

from nerf_descriptor_ros.data.dataset import atomic_write_bytes, atomic_write_json
from nerf_descriptor_ros.geometry import invert, transform_points
from nerf_descriptor_ros.sim.objects import ObjectModel, ObjectModelError, body_frame_pose, model_visual_mesh

CHECK_VERSION = "1"  # part of every cache key: bump when the check or the decomposition changes
MISMATCH_FRACTION = 0.01
RAYS_PER_SIDE = 48  # a grid of this many rays squared from each of the six axis directions
VHACD_RESOLUTION = 400_000  # voxels: thin enough walls (a mug's) stay open


def surface_tolerance_m(extent_m: float) -> float:
    """How far collision surface may lie from the visual one and still count as the same: a tenth
    of the object's size (decomposed models' hulls are a little fatter than their meshes), at
    least a few millimetres."""
    return max(0.003, 0.1 * extent_m)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nerf_descriptor_ros" / "collision"


def faithful_urdf(model: ObjectModel) -> Path:
    """``model``'s URDF, or a cached copy whose one link collides as its visual mesh looks."""
    link = _single_link(model.path)
    if link is None or not _meshes_only(link):
        return model.path
    try:
        vertices, triangles = model_visual_mesh(model)
    except ObjectModelError:
        return model.path  # visuals that cannot be compared (a primitive, another format)
    key = _cache_key(model, vertices, triangles, _collision_files(model.path, link))
    folder = cache_dir()
    replaced = folder / f"{key}.urdf"
    if replaced.is_file():
        return replaced

    def load(client):
        return client.loadURDF(str(model.path), globalScaling=model.scale)

    if _verdict(folder / f"{key}.json", load, (vertices, triangles))["faithful"]:
        return model.path
    collision = _decompose(vertices / model.scale, triangles, folder / f"{key}_collision.obj")
    atomic_write_bytes(replaced, _urdf_with_collision(model.path, collision))
    return replaced


def faithful_mesh_collision(model: ObjectModel) -> Path:
    """The mesh file to collide with for a bare mesh object: itself, or its cached decomposition."""
    vertices, triangles = model_visual_mesh(model)
    key = _cache_key(model, vertices, triangles, [])
    folder = cache_dir()
    decomposed = folder / f"{key}_collision.obj"
    if decomposed.is_file():
        return decomposed
    scale = [model.scale] * 3

    def load(client):
        shape = client.createCollisionShape(client.GEOM_MESH, fileName=str(model.path), meshScale=scale)
        return client.createMultiBody(baseMass=1.0, baseCollisionShapeIndex=shape)

    if _verdict(folder / f"{key}.json", load, (vertices, triangles))["faithful"]:
        return model.path
    return _decompose(vertices / model.scale, triangles, decomposed)


def mismatch_fraction(client, body: int, vertices: np.ndarray, triangles: np.ndarray) -> tuple[float, float]:
    """(fraction of ``body``'s collision surface farther than the tolerance from the visual mesh
    ``vertices``/``triangles`` given in the body's URDF frame, the tolerance in metres)."""
    import open3d as o3d  # only when a model is checked for the first time

    low, high = (np.asarray(corner) for corner in client.getAABB(body))
    hits = transform_points(invert(body_frame_pose(client, body)), _ray_hits(client, body, low, high))
    if len(hits) == 0:
        return 0.0, 0.0
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    distance = scene.compute_distance(o3d.core.Tensor(hits.astype(np.float32))).numpy()
    tolerance = surface_tolerance_m(float(np.ptp(vertices, axis=0).max()))
    return float(np.mean(distance > tolerance)), tolerance


def _ray_hits(client, body: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Where a grid of rays along each axis, both ways, first meets ``body`` (world frame)."""
    margin = 0.05
    points = []
    for axis in range(3):
        across = [a for a in range(3) if a != axis]
        grid = np.meshgrid(*(np.linspace(low[a], high[a], RAYS_PER_SIDE) for a in across))
        starts = np.zeros((RAYS_PER_SIDE**2, 3))
        starts[:, across[0]], starts[:, across[1]] = grid[0].ravel(), grid[1].ravel()
        for begin, end in ((low[axis] - margin, high[axis] + margin), (high[axis] + margin, low[axis] - margin)):
            a, b = starts.copy(), starts.copy()
            a[:, axis], b[:, axis] = begin, end
            for first in range(0, len(a), pybullet.MAX_RAY_INTERSECTION_BATCH_SIZE):
                chunk = slice(first, first + pybullet.MAX_RAY_INTERSECTION_BATCH_SIZE)
                hits = client.rayTestBatch(a[chunk].tolist(), b[chunk].tolist())
                points += [hit[3] for hit in hits if hit[0] == body]
    return np.asarray(points, dtype=np.float64).reshape(-1, 3)


def _verdict(path: Path, load, visual: tuple[np.ndarray, np.ndarray]) -> dict:
    """The cached verdict at ``path``, or a new one for the body ``load(client)`` creates, whose
    ``visual`` mesh (vertices, triangles) is given in its URDF frame at its scale."""
    if path.is_file():
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text())
    client = BulletClient(connection_mode=pybullet.DIRECT)
    try:
        fraction, tolerance = mismatch_fraction(client, load(client), *visual)
    finally:
        client.disconnect()
    verdict = {"faithful": fraction <= MISMATCH_FRACTION, "mismatch_fraction": fraction, "tolerance_m": tolerance}
    atomic_write_json(path, verdict)
    return verdict


def _decompose(vertices: np.ndarray, triangles: np.ndarray, out: Path) -> Path:
    """V-HACD of a triangle mesh into ``out`` (an .obj of convex parts), written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        source, result = Path(scratch) / "visual.obj", Path(scratch) / "parts.obj"
        lines = [f"v {x:.7g} {y:.7g} {z:.7g}" for x, y, z in vertices]
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in triangles]
        source.write_text("\n".join(lines) + "\n")
        with _quiet():  # V-HACD prints its progress on the process's stdout
            pybullet.vhacd(str(source), str(result), str(Path(scratch) / "vhacd.log"), resolution=VHACD_RESOLUTION)
        if not result.is_file() or result.stat().st_size == 0:
            raise RuntimeError(f"V-HACD wrote no decomposition for {out.name}")
        atomic_write_bytes(out, result.read_bytes())
    return out


@contextlib.contextmanager
def _quiet():
    """Send what C code writes to this process's stdout to /dev/null meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _single_link(urdf: Path):
    """The URDF's only link element, or None (several links, or a file that does not parse)."""
    try:
        links = ET.parse(urdf).getroot().findall("link")
    except ET.ParseError:
        return None
    return links[0] if len(links) == 1 else None


def _meshes_only(link) -> bool:
    """Whether ``link`` moves (mass above 0) and every collision of it is a mesh. Primitives (a
    box, a cylinder) collide exactly as declared, and so do a static body's concave meshes, so
    such models are left as their authors made them."""
    mass = link.find("inertial/mass")
    try:
        static = mass is not None and float(mass.get("value", "1")) == 0.0
    except ValueError:
        return False
    collisions = link.findall("collision")
    return not static and bool(collisions) and all(c.find("geometry/mesh") is not None for c in collisions)


def _collision_files(urdf: Path, link) -> list[Path]:
    files = [mesh.get("filename", "") for mesh in link.iter("mesh") if mesh.get("filename")]
    return [urdf.parent / f for f in files if "://" not in f and (urdf.parent / f).is_file()]


def _cache_key(model: ObjectModel, vertices: np.ndarray, triangles: np.ndarray, files: list[Path]) -> str:
    digest = hashlib.sha256(f"{CHECK_VERSION}|{model.scale!r}|".encode())
    digest.update(model.path.read_bytes())
    digest.update(np.ascontiguousarray(vertices, np.float64).tobytes())
    digest.update(np.ascontiguousarray(triangles, np.int64).tobytes())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:32]


def _urdf_with_collision(urdf: Path, collision: Path) -> bytes:
    """The URDF with its link's collisions replaced by the mesh ``collision`` (link frame) and
    every relative file name made absolute, so the copy loads from the cache folder."""
    tree = ET.parse(urdf)
    link = tree.getroot().find("link")
    for old in link.findall("collision"):
        link.remove(old)
    element = ET.SubElement(link, "collision")
    ET.SubElement(ET.SubElement(element, "geometry"), "mesh", filename=str(collision))
    for node in tree.getroot().iter():
        name = node.get("filename")
        if name and "://" not in name and not Path(name).is_absolute():
            node.set("filename", str((urdf.parent / name).resolve()))
    return ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True)
