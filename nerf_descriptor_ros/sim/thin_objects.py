"""Procedural thin-structured objects (fork, whisk, wire basket) as .obj meshes with a URDF.

NeRF-Supervision evaluates on strainers, whisks and forks: wires a few millimetres thick through
which the background shows, where an expected depth smears foreground and background together.
These generators build such objects from tubes swept along curves, with proportions varied by a
seed so that evaluation does not hinge on one shape. Units are metres; the object rests on the
plane z = 0 with its footprint centred on the origin.

The URDF's visual is the mesh; its collision is one capsule per straight piece of wire (the
swept curves simplified to within half a wire radius), so that the simulator's contacts see the
gaps between the wires: a single mesh collision would be turned into its convex hull, a solid
blob through which no finger fits between two tines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nerf_descriptor_ros.data.dataset import atomic_write_bytes, validate_object_name

KINDS = ("fork", "whisk", "basket")
# A wire's collision capsules follow its curve to within this fraction of its radius.
SEGMENT_TOLERANCE = 0.5


@dataclass
class WireMesh:
    vertices: np.ndarray  # (V, 3) float
    faces: np.ndarray  # (F, 3) int, counter-clockwise seen from outside
    # The wire's straight pieces, for collision shapes: end points (S, 2, 3) and radii (S,).
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 3)))
    radii: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # A turn that leaves the object looking the same: (axis "x", "y" or "z", folds, a point on the axis), or None.
    symmetry: tuple[str, int, np.ndarray] | None = None

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(0), self.vertices.max(0)

    def center_of_mass(self) -> np.ndarray:
        """The centroid of the volume the closed tubes enclose (uniform wire), by the divergence theorem."""
        v = self.vertices[self.faces]
        volumes = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2]))
        return (volumes[:, None] * v.sum(axis=1)).sum(axis=0) / (4.0 * volumes.sum())


def simplify(path: np.ndarray, tolerance: float) -> np.ndarray:
    """The points of polyline ``path`` to keep so that every dropped point lies within
    ``tolerance`` of the straight piece that replaces it (greedy, from the start)."""
    keep, start = [0], 0
    while start < len(path) - 1:
        end = start + 1
        while end + 1 < len(path):
            a, b = path[start], path[end + 1]
            chord = b - a
            inner = path[start + 1 : end + 1] - a
            along = np.clip(inner @ chord / max(chord @ chord, 1e-24), 0.0, 1.0)
            if np.linalg.norm(inner - along[:, None] * chord, axis=1).max() > tolerance:
                break
            end += 1
        keep.append(end)
        start = end
    return path[keep]


def tube(path: np.ndarray, radius: float, sides: int = 8, closed: bool = False) -> WireMesh:
    """A tube of ``radius`` swept along the polyline ``path`` (N, 3), ends capped unless closed."""
    path = np.asarray(path, dtype=np.float64)
    if closed:
        path = np.concatenate([path, path[:1]])
    tangents = np.gradient(path, axis=0)
    if closed:  # the seam's tangent must agree at both ends
        tangents[0] = tangents[-1] = path[1] - path[-2]
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    # Parallel transport of a normal along the curve keeps the rings from twisting.
    helper = np.array([0.0, 0.0, 1.0]) if abs(tangents[0, 2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    normal = np.cross(tangents[0], helper)
    normal /= np.linalg.norm(normal)
    rings = []
    angles = np.linspace(0.0, 2.0 * np.pi, sides, endpoint=False)
    for point, tangent in zip(path, tangents):
        normal = normal - np.dot(normal, tangent) * tangent
        normal /= np.linalg.norm(normal)
        binormal = np.cross(tangent, normal)
        rings.append(point + radius * (np.cos(angles)[:, None] * normal + np.sin(angles)[:, None] * binormal))
    vertices = np.concatenate(rings)
    faces = []
    for i in range(len(path) - 1):
        for j in range(sides):
            a, b = i * sides + j, i * sides + (j + 1) % sides
            c, d = a + sides, b + sides
            faces += [(a, b, d), (a, d, c)]
    if not closed:
        first, last = len(vertices), len(vertices) + 1
        vertices = np.concatenate([vertices, path[:1], path[-1:]])
        end = (len(path) - 1) * sides
        for j in range(sides):
            faces.append((first, (j + 1) % sides, j))
            faces.append((last, end + j, end + (j + 1) % sides))
    pieces = simplify(path, SEGMENT_TOLERANCE * radius)
    if not closed:  # a capsule's round end reaches its radius past its end point: end at the caps
        for end, inner in ((0, 1), (-1, -2)):
            step = pieces[inner] - pieces[end]
            pieces[end] += step * min(radius / max(np.linalg.norm(step), 1e-12), 0.5)
    segments = np.stack([pieces[:-1], pieces[1:]], axis=1)
    return WireMesh(vertices, np.asarray(faces, dtype=np.int64), segments, np.full(len(segments), float(radius)))


def merge(meshes: list[WireMesh]) -> WireMesh:
    vertices, faces, offset = [], [], 0
    for mesh in meshes:
        vertices.append(mesh.vertices)
        faces.append(mesh.faces + offset)
        offset += len(mesh.vertices)
    segments = np.concatenate([mesh.segments for mesh in meshes])
    return WireMesh(
        np.concatenate(vertices), np.concatenate(faces), segments, np.concatenate([m.radii for m in meshes])
    )


def _line(a, b, n: int = 2) -> np.ndarray:
    return np.linspace(np.asarray(a, float), np.asarray(b, float), n)


def fork(rng: np.random.Generator, wire_radius: float = 0.0015) -> WireMesh:
    """A fork lying on its back: a handle, a neck and 3-5 tines from a cross-bar."""
    length = rng.uniform(0.16, 0.21)
    tines = int(rng.integers(3, 6))
    head_width = rng.uniform(0.022, 0.032)
    tine_length = rng.uniform(0.35, 0.45) * length * 0.5
    handle_end = -0.5 * length
    neck = 0.5 * length - tine_length - 0.02
    lift = rng.uniform(0.005, 0.015)  # the head curves up from the table like a real fork
    parts = [tube(_line([handle_end, 0, 2 * wire_radius], [neck, 0, 2 * wire_radius]), 2 * wire_radius)]
    bar_z = 2 * wire_radius + lift
    parts.append(tube(_line([neck, 0, 2 * wire_radius], [neck + 0.02, 0, bar_z], 6), 1.5 * wire_radius))
    parts.append(tube(_line([neck + 0.02, -head_width / 2, bar_z], [neck + 0.02, head_width / 2, bar_z]), wire_radius))
    for y in np.linspace(-head_width / 2, head_width / 2, tines):
        parts.append(tube(_line([neck + 0.02, y, bar_z], [neck + 0.02 + tine_length, y, bar_z + lift]), wire_radius))
    return merge(parts)


def whisk(rng: np.random.Generator, wire_radius: float = 0.001) -> WireMesh:
    """A balloon whisk on its side: a handle and 4-8 wire loops fanned around its axis."""
    handle = rng.uniform(0.08, 0.11)
    bulb = rng.uniform(0.10, 0.14)
    width = rng.uniform(0.025, 0.035)
    loops = int(rng.integers(4, 9))
    axis_height = width + 0.004
    t = np.linspace(0.0, np.pi, 24)
    parts = [tube(_line([-handle, 0, axis_height], [0, 0, axis_height]), 0.008, sides=12)]
    for k in range(loops):
        angle = np.pi * k / loops
        x = bulb * (1 - np.cos(t)) / 2
        r = width * np.sin(t) * (1 + 0.3 * np.sin(t))  # wider towards the far end
        curve = np.stack([x, r * np.cos(angle), axis_height + r * np.sin(angle)], -1)
        back = np.stack([x[::-1], -r[::-1] * np.cos(angle), axis_height - r[::-1] * np.sin(angle)], -1)
        parts.append(tube(np.concatenate([curve, back[1:-1]]), wire_radius, closed=True))
    mesh = merge(parts)
    # Each loop is two half-loops on opposite sides of the axis, so the wires repeat every 180/loops degrees.
    mesh.symmetry = ("x", 2 * loops, np.array([0.0, 0.0, axis_height]))
    return mesh


def basket(rng: np.random.Generator, wire_radius: float = 0.0012) -> WireMesh:
    """A hemispherical wire strainer, open side up: meridians, parallels, a rim and a handle."""
    radius = rng.uniform(0.05, 0.075)
    meridians = int(rng.integers(8, 15))
    parallels = int(rng.integers(3, 6))
    center_z = radius + wire_radius
    polar = np.linspace(0.0, np.pi / 2, 20)
    parts = []
    for k in range(meridians):
        phi = 2 * np.pi * k / meridians
        arc = np.stack(
            [
                radius * np.sin(polar) * np.cos(phi),
                radius * np.sin(polar) * np.sin(phi),
                center_z - radius * np.cos(polar),
            ],
            -1,
        )
        parts.append(tube(arc[1:], wire_radius))
    for theta in np.linspace(np.pi / 2, 0.0, parallels + 1, endpoint=False)[1:]:
        phi = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        ring = np.stack(
            [
                radius * np.sin(theta) * np.cos(phi),
                radius * np.sin(theta) * np.sin(phi),
                np.full_like(phi, center_z - radius * np.cos(theta)),
            ],
            -1,
        )
        parts.append(tube(ring, wire_radius, closed=True))
    phi = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    parts.append(
        tube(
            np.stack([radius * np.cos(phi), radius * np.sin(phi), np.full_like(phi, center_z)], -1),
            2 * wire_radius,
            closed=True,
        )
    )
    handle_length = rng.uniform(0.08, 0.12)
    parts.append(tube(_line([radius, 0, center_z], [radius + handle_length, 0, center_z + 0.01]), 2.5 * wire_radius))
    return merge(parts)


GENERATORS = {"fork": fork, "whisk": whisk, "basket": basket}


def make_thin_object(kind: str, seed: int = 0) -> WireMesh:
    """A ``kind`` object with seed-varied proportions, resting on z = 0, centred in x and y."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown thin object {kind!r}; choose one of {KINDS}")
    mesh = GENERATORS[kind](np.random.default_rng(seed))
    lo, hi = mesh.bounds()
    shift = np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])
    symmetry = None if mesh.symmetry is None else (*mesh.symmetry[:2], mesh.symmetry[2] + shift)
    return WireMesh(mesh.vertices + shift, mesh.faces, mesh.segments + shift, mesh.radii, symmetry)


def symmetry_declaration(kind: str, seed: int = 0) -> str:
    """The generated object's symmetry in its model frame, as ``keypoints.any_point.symmetry_transforms``
    reads it: a whisk's loops repeat about its handle's axis; a fork and a basket have none (plain grey, so
    the shape alone decides)."""
    mesh = make_thin_object(kind, seed)
    if mesh.symmetry is None:
        return "none"
    axis, folds, point = mesh.symmetry
    return f"{axis}:{folds}@" + ",".join(f"{value:.5f}" for value in point)


def obj_text(mesh: WireMesh) -> str:
    lines = [f"# nerf_descriptor_ros thin object: {len(mesh.vertices)} vertices"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.faces]
    return "\n".join(lines) + "\n"


def collision_xml(mesh: WireMesh) -> str:
    """One URDF ``<collision>`` per segment of ``mesh``: a capsule (axis along its local z) from
    one end point to the other, with the wire's radius."""
    if not len(mesh.segments):
        raise ValueError("the wire mesh has no segments to make collision shapes from")
    elements = []
    for (a, b), radius in zip(mesh.segments, mesh.radii):
        d = b - a
        length = float(np.linalg.norm(d))
        if length < 1e-9:
            continue
        mid = (a + b) / 2
        pitch = np.arctan2(np.hypot(d[0], d[1]), d[2])  # z turned onto d: about y, then about z
        yaw = np.arctan2(d[1], d[0])
        elements.append(
            f'    <collision><origin xyz="{mid[0]:.6f} {mid[1]:.6f} {mid[2]:.6f}" rpy="0 {pitch:.6f} {yaw:.6f}"/>'
            f'<geometry><capsule radius="{radius:.6f}" length="{length:.6f}"/></geometry></collision>'
        )
    return "\n".join(elements)


def urdf_text(
    name: str,
    mesh_file: str,
    collisions: str,
    rgba=(0.75, 0.75, 0.78, 1.0),
    mass: float = 0.05,
    center_of_mass=(0.0, 0.0, 0.0),
) -> str:
    """The URDF of a thin object: ``mesh_file`` as its visual, ``collisions`` (collision_xml) as its shape,
    its mass at ``center_of_mass``, where gravity acts and so decides how it comes to rest (the inertia is
    a small round stand-in)."""
    color = " ".join(f"{c:.3f}" for c in rgba)
    com = " ".join(f"{c:.6f}" for c in center_of_mass)
    geometry = f'<geometry><mesh filename="{mesh_file}" scale="1 1 1"/></geometry>'
    return f"""<?xml version="1.0"?>
<robot name="{name}">
  <link name="base_link">
    <inertial><origin xyz="{com}"/><mass value="{mass}"/>
      <inertia ixx="1e-4" ixy="0" ixz="0" iyy="1e-4" iyz="0" izz="1e-4"/></inertial>
    <visual><origin xyz="0 0 0"/>{geometry}
      <material name="{name}_material"><color rgba="{color}"/></material></visual>
{collisions}
  </link>
</robot>
"""


def write_thin_object(out_dir: str | Path, kind: str, seed: int = 0, rgba=(0.75, 0.75, 0.78, 1.0)) -> Path:
    """Write ``<kind>_<seed>.obj`` and ``.urdf`` into ``out_dir``; return the URDF's path."""
    name = validate_object_name(f"{kind}_{seed}")
    out_dir = Path(out_dir)
    mesh = make_thin_object(kind, seed)
    atomic_write_bytes(out_dir / f"{name}.obj", obj_text(mesh).encode())
    urdf = urdf_text(name, f"{name}.obj", collision_xml(mesh), rgba, center_of_mass=mesh.center_of_mass())
    atomic_write_bytes(out_dir / f"{name}.urdf", urdf.encode())
    return out_dir / f"{name}.urdf"
