"""Objects collide as they look: a model whose collision would fill what the camera sees as empty
(a cup's inside) is given a convex decomposition of its visual mesh; faithful models load as
they are."""

from __future__ import annotations

import numpy as np
import pybullet
import pytest
from pybullet_utils.bullet_client import BulletClient

from nerf_descriptor_ros.sim import SimConfig, SimWorld, collision_fidelity
from nerf_descriptor_ros.sim.objects import load_object, read_mesh_triangles, resolve_object_model

CUP_RADIUS, CUP_WALL, CUP_HEIGHT, CUP_FLOOR = 0.04, 0.007, 0.08, 0.006


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def cup_obj(segments: int = 32) -> str:
    """An open cup as an .obj of quads: outer and inner walls, the rim, the floor inside and out."""
    angles = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    inner = CUP_RADIUS - CUP_WALL
    rings = [  # radius, height: outer bottom, outer top, inner top, inner floor
        (CUP_RADIUS, 0.0),
        (CUP_RADIUS, CUP_HEIGHT),
        (inner, CUP_HEIGHT),
        (inner, CUP_FLOOR),
    ]
    lines = [f"v {r * np.cos(a):.6f} {r * np.sin(a):.6f} {z:.6f}" for r, z in rings for a in angles]
    lines += ["v 0 0 0", f"v 0 0 {CUP_FLOOR}"]
    bottom, floor = 4 * segments + 1, 4 * segments + 2
    for ring in range(3):
        for k in range(segments):
            a, b = ring * segments + k + 1, ring * segments + (k + 1) % segments + 1
            lines.append(f"f {a} {b} {b + segments} {a + segments}")
    for k in range(segments):
        a, b = k + 1, (k + 1) % segments + 1
        lines.append(f"f {bottom} {b} {a}")
        lines.append(f"f {floor} {a + 3 * segments} {b + 3 * segments}")
    return "\n".join(lines) + "\n"


def write_cup(folder, collision_mesh: str = "cup.obj"):
    (folder / "cup.obj").write_text(cup_obj())
    (folder / "cup.urdf").write_text(
        f"""<robot name="cup"><link name="base_link">
  <inertial><origin xyz="0 0 0.03"/><mass value="0.2"/>
    <inertia ixx="1e-4" ixy="0" ixz="0" iyy="1e-4" iyz="0" izz="1e-4"/></inertial>
  <visual><geometry><mesh filename="cup.obj"/></geometry></visual>
  <collision><geometry><mesh filename="{collision_mesh}"/></geometry></collision>
</link></robot>"""
    )
    return folder / "cup.urdf"


def first_hit_height(client, body, x=0.0, y=0.0) -> float:
    hit = client.rayTest([x, y, 0.5], [x, y, -0.1])[0]
    assert hit[0] == body
    return hit[3][2]


def test_obj_polygons_are_split_into_triangles_and_negative_indices_count_back(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1/1 2/2 3/3 4/4\nf -4 -3 -1\n")
    vertices, triangles = read_mesh_triangles(path)
    assert vertices.shape == (4, 3)
    assert triangles.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 3]]
    path.write_text("v 0 0 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match="names a vertex"):
        read_mesh_triangles(path)


def test_a_cup_that_would_collide_as_a_solid_block_gets_its_inside_back(tmp_path):
    urdf = write_cup(tmp_path)
    model = resolve_object_model(str(urdf))
    client = BulletClient(connection_mode=pybullet.DIRECT)
    try:
        as_written = client.loadURDF(str(urdf))  # one mesh part: pybullet collides with its convex hull
        assert first_hit_height(client, as_written) == pytest.approx(CUP_HEIGHT, abs=0.003)
        client.removeBody(as_written)
        body = load_object(client, model)
        assert first_hit_height(client, body) < CUP_FLOOR + 0.006, "a ray down the middle must reach the floor"
        rim = CUP_RADIUS - CUP_WALL / 2
        assert first_hit_height(client, body, rim, 0.0) == pytest.approx(CUP_HEIGHT, abs=0.004)
    finally:
        client.disconnect()
    verdict = next(collision_fidelity.cache_dir().glob("*.json")).read_text()
    assert '"faithful": false' in verdict


def test_a_faithful_model_loads_unchanged_and_its_verdict_is_cached(tmp_path, monkeypatch):
    (tmp_path / "block.obj").write_text(
        "v 0 0 0\nv .05 0 0\nv .05 .03 0\nv 0 .03 0\nv 0 0 .02\nv .05 0 .02\nv .05 .03 .02\nv 0 .03 .02\n"
        "f 1 4 3 2\nf 5 6 7 8\nf 1 2 6 5\nf 2 3 7 6\nf 3 4 8 7\nf 4 1 5 8\n"
    )
    urdf = write_cup(tmp_path)  # a URDF beside it, then made a block
    urdf.write_text(urdf.read_text().replace("cup.obj", "block.obj"))
    model = resolve_object_model(str(urdf))
    assert collision_fidelity.faithful_urdf(model) == model.path
    assert len(list(collision_fidelity.cache_dir().glob("*.json"))) == 1

    def no_second_check(*args, **kwargs):
        raise AssertionError("the cached verdict must be used")

    monkeypatch.setattr(collision_fidelity, "mismatch_fraction", no_second_check)
    assert collision_fidelity.faithful_urdf(model) == model.path


def test_a_bare_concave_mesh_collides_with_its_decomposition(tmp_path):
    (tmp_path / "cup.obj").write_text(cup_obj())
    model = resolve_object_model(str(tmp_path / "cup.obj"))
    collision = collision_fidelity.faithful_mesh_collision(model)
    assert collision != model.path and collision.parent == collision_fidelity.cache_dir()
    assert sum(line.startswith("o ") for line in collision.read_text().splitlines()) > 1


def test_the_simulated_mug_is_lifted_by_its_rim():
    """pybullet_data's mug collides as a closed cylinder as written: a finger inside the cup stood
    on its invisible lid and the mug never rose."""
    with SimWorld(SimConfig(object_source="objects/mug.urdf", width=160, height=120)) as world:
        world.place_object_random(1000)
        T = world.object_pose
        centre, top = T[:3, 3], world.object_bounds()[1][2]
        radial = T[:3, 0] * np.array([1.0, 1.0, 0.0])
        radial /= np.linalg.norm(radial)
        grasp = np.eye(4)  # +z approach (down), +y closing (across the wall), TCP 1 cm below the rim
        grasp[:3, 1], grasp[:3, 2] = radial, [0.0, 0.0, -1.0]
        grasp[:3, 0] = np.cross(grasp[:3, 1], grasp[:3, 2])
        grasp[:3, 3] = centre + 0.037 * radial
        grasp[2, 3] = top - 0.01
        result = world.pick_and_lift(grasp, 0.1, 0.1)
    assert result.success, result.message
