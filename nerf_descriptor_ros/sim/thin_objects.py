"""Procedural thin-structured objects (fork, whisk, wire basket) as .obj meshes with a URDF.

NeRF-Supervision evaluates on strainers, whisks and forks: wires a few millimetres thick through
which the background shows, where an expected depth smears foreground and background together.
These generators build such objects from tubes swept along curves, with proportions varied by a
seed so that evaluation does not hinge on one shape. Units are metres; the object rests on the
plane z = 0 with its footprint centred on the origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerf_descriptor_ros.data.dataset import atomic_write_bytes, validate_object_name

KINDS = ("fork", "whisk", "basket")


@dataclass
class WireMesh:
    vertices: np.ndarray  # (V, 3) float
    faces: np.ndarray  # (F, 3) int, counter-clockwise seen from outside

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(0), self.vertices.max(0)


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
    return WireMesh(vertices, np.asarray(faces, dtype=np.int64))


def merge(meshes: list[WireMesh]) -> WireMesh:
    vertices, faces, offset = [], [], 0
    for mesh in meshes:
        vertices.append(mesh.vertices)
        faces.append(mesh.faces + offset)
        offset += len(mesh.vertices)
    return WireMesh(np.concatenate(vertices), np.concatenate(faces))


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
    return merge(parts)


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
    return WireMesh(mesh.vertices + shift, mesh.faces)


def obj_text(mesh: WireMesh) -> str:
    lines = [f"# nerf_descriptor_ros thin object: {len(mesh.vertices)} vertices"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.faces]
    return "\n".join(lines) + "\n"


def urdf_text(name: str, mesh_file: str, rgba=(0.75, 0.75, 0.78, 1.0), mass: float = 0.05) -> str:
    color = " ".join(f"{c:.3f}" for c in rgba)
    geometry = f'<geometry><mesh filename="{mesh_file}" scale="1 1 1"/></geometry>'
    return f"""<?xml version="1.0"?>
<robot name="{name}">
  <link name="base_link">
    <inertial><origin xyz="0 0 0"/><mass value="{mass}"/>
      <inertia ixx="1e-4" ixy="0" ixz="0" iyy="1e-4" iyz="0" izz="1e-4"/></inertial>
    <visual><origin xyz="0 0 0"/>{geometry}
      <material name="{name}_material"><color rgba="{color}"/></material></visual>
    <collision><origin xyz="0 0 0"/>{geometry}</collision>
  </link>
</robot>
"""


def write_thin_object(out_dir: str | Path, kind: str, seed: int = 0, rgba=(0.75, 0.75, 0.78, 1.0)) -> Path:
    """Write ``<kind>_<seed>.obj`` and ``.urdf`` into ``out_dir``; return the URDF's path."""
    name = validate_object_name(f"{kind}_{seed}")
    out_dir = Path(out_dir)
    mesh = make_thin_object(kind, seed)
    atomic_write_bytes(out_dir / f"{name}.obj", obj_text(mesh).encode())
    atomic_write_bytes(out_dir / f"{name}.urdf", urdf_text(name, f"{name}.obj", rgba).encode())
    return out_dir / f"{name}.urdf"
