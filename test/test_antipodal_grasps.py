"""Antipodal grasps that fit the gripper (grasping/antipodal.py, grasping/gripper.py), and thin
objects whose collision shapes are their wires (sim/thin_objects.py), all on the CPU."""

import time

import numpy as np
import pytest

from nerf_descriptor_ros.config import ConfigError, load_dataclass
from nerf_descriptor_ros.geometry import matrix_to_quat_xyzw
from nerf_descriptor_ros.grasping.antipodal import AntipodalConfig, sample_antipodal_grasps
from nerf_descriptor_ros.grasping.gripper import GripperConfig, gripper_boxes, lowest_z
from nerf_descriptor_ros.grasping.planner import GraspError

PANDA = GripperConfig()


def cylinder_cloud(radius, length, centre_z, n=20_000, seed=0):
    """Points and outward normals on a cylinder along x (no end caps), its axis at height centre_z."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    normals = np.stack([np.zeros(n), np.cos(angle), np.sin(angle)], -1)
    x = rng.uniform(-length / 2, length / 2, n)
    return np.stack([x, radius * normals[:, 1], centre_z + radius * normals[:, 2]], -1), normals


def box_cloud(size, centre, n=20_000, seed=0):
    """Points and outward normals on all six faces of an axis-aligned box."""
    rng = np.random.default_rng(seed)
    size, centre = np.asarray(size, float), np.asarray(centre, float)
    areas = np.repeat([size[1] * size[2], size[0] * size[2], size[0] * size[1]], 2)
    face = rng.choice(6, n, p=areas / areas.sum())
    axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
    points = rng.uniform(-0.5, 0.5, (n, 3)) * size
    points[np.arange(n), axis] = sign * size[axis] / 2
    normals = np.zeros((n, 3))
    normals[np.arange(n), axis] = sign
    return points + centre, normals


def hand_lowest_z(T, opening, gripper=PANDA) -> float:
    return min(lowest_z(T, box) for box in gripper_boxes(gripper, opening).values())


def test_gripper_config_is_the_panda_and_refuses_bad_geometry_in_one_line():
    assert PANDA.max_opening_m == 0.08 and PANDA.finger_length_m == pytest.approx(0.0538)
    assert PANDA.tip_past_tcp_m == pytest.approx(0.0584 + 0.0538 - 0.1034)  # fingertips 8.8 mm past the TCP
    with pytest.raises(ConfigError, match=r"^max_opening_m: must be a finite number > 0, got -0.01$") as error:
        GripperConfig(max_opening_m=-0.01)
    assert "\n" not in str(error.value)
    # Through the one loader (YAML, --set, node parameters): the key path is named, one line.
    with pytest.raises(ConfigError, match=r"^--set: max_opening_m: .*must be a finite number > 0") as error:
        load_dataclass(GripperConfig, {"max_opening_m": -0.01}, "--set")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="palm_size_m: must be three finite numbers > 0"):
        GripperConfig(palm_size_m=(0.06, 0.0, 0.09))
    with pytest.raises(ConfigError, match="tcp_offset_m: the TCP must lie along the fingers"):
        GripperConfig(tcp_offset_m=0.2)
    assert load_dataclass(GripperConfig, {"palm_size_m": [0.07, 0.2, 0.1]}, "test").palm_size_m == (0.07, 0.2, 0.1)
    with pytest.raises(ConfigError, match="num_samples: must be >= 1"):
        AntipodalConfig(num_samples=0)


def test_a_box_wider_than_the_opening_offers_only_too_wide_grasps():
    points, normals = box_cloud([0.12, 0.12, 0.12], [0.0, 0.0, 0.06])
    target = np.array([0.06, 0.0, 0.11])  # on a side face, near the top
    with pytest.raises(GraspError, match="most of 500 candidates are wider than the gripper opens") as error:
        sample_antipodal_grasps(points, normals, target, PANDA, AntipodalConfig(), table_z=0.0)
    assert "\n" not in str(error.value)
    # The same box in a gripper that opens to 20 cm: grasps across its 12 cm, and none too wide.
    wide = GripperConfig(max_opening_m=0.2)
    grasps = sample_antipodal_grasps(points, normals, target, wide, AntipodalConfig(), table_z=0.0)
    assert len(grasps.scores) > 0 and grasps.rejections["too_wide"] == 0
    assert grasps.candidates == 100 * 5  # every candidate is a grasp or counted by its cause
    np.testing.assert_allclose(grasps.widths, 0.12, atol=0.003)
    closing = grasps.T_base_tcp[:, :3, 1]
    assert np.all(np.abs(closing[:, 0]) > 0.99)  # across the box along x, the face's normal
    assert np.all(np.diff(grasps.scores) <= 0)  # best first


def test_grasps_whose_hand_would_go_below_the_table_are_rejected():
    points, normals = box_cloud([0.10, 0.04, 0.015], [0.0, 0.0, 0.0075])  # a flat bar on the table
    target = np.array([0.0, 0.0, 0.015])
    config = AntipodalConfig(max_tilt_deg=90.0, search_radius_m=0.03)  # sideways approaches are tried too
    grasps = sample_antipodal_grasps(points, normals, target, PANDA, config, table_z=0.0)
    assert grasps.rejections["table_collision"] > 0 and len(grasps.scores) > 0
    assert "collide with the table" in grasps.summary()
    for T, opening in zip(grasps.T_base_tcp, grasps.openings):
        assert hand_lowest_z(T, opening) >= config.table_clearance_m - 1e-9
    # The hand backs off along the approach so that the fingertips, 8.8 mm past the TCP, stay up.
    assert np.any(grasps.T_base_tcp[:, 2, 3] > grasps.centres[:, 2] + 1e-4)
    # Without a table the same sampler keeps grasps whose hand is partly below z = 0.
    free = sample_antipodal_grasps(points, normals, target, PANDA, config, table_z=None)
    assert free.rejections["table_collision"] == 0
    assert min(hand_lowest_z(T, o) for T, o in zip(free.T_base_tcp, free.openings)) < 0.0


def test_a_knob_is_held_deep_between_the_pads_down_to_what_it_stands_on():
    """Contacts near a knob's top edge are pushed down the approach until the fingertips would
    touch the block under the knob: held by its last millimetres, the object turns out of the pads."""
    block_top, knob_top = 0.04, 0.07
    block, block_normals = box_cloud([0.12, 0.12, block_top], [0.0, 0.0, block_top / 2])
    knob, knob_normals = box_cloud([0.02, 0.02, knob_top - block_top], [0.0, 0.0, (block_top + knob_top) / 2], 5_000)
    under_knob = (np.abs(block[:, :2]).max(1) < 0.01) & (block[:, 2] > block_top - 1e-9)
    knob_bottom = knob[:, 2] < block_top + 1e-9
    points = np.concatenate([block[~under_knob], knob[~knob_bottom]])
    normals = np.concatenate([block_normals[~under_knob], knob_normals[~knob_bottom]])
    target = np.array([0.0, 0.0, knob_top])
    config = AntipodalConfig(max_tilt_deg=0.0)  # straight down: the fingertips are the lowest part

    shallow = sample_antipodal_grasps(
        points, normals, target, PANDA, AntipodalConfig(max_tilt_deg=0.0, grasp_depth_m=0.0), 0.0
    )
    deep = sample_antipodal_grasps(points, normals, target, PANDA, config, table_z=0.0)
    assert shallow.T_base_tcp[0, 2, 3] > block_top + 0.015  # the best contacts are near the top edge
    np.testing.assert_allclose(deep.widths[0], 0.02, atol=0.002)  # still across the knob
    fingertips = deep.T_base_tcp[0, 2, 3] - PANDA.tip_past_tcp_m
    assert block_top < fingertips < block_top + config.grasp_depth_m / 4 + 0.001  # as deep as one step allows
    assert deep.T_base_tcp[0, 2, 3] < shallow.T_base_tcp[0, 2, 3] - 0.005
    assert deep.candidates == shallow.candidates == 100 * 5  # every candidate a grasp or counted by its cause


def test_a_3mm_wire_lying_on_the_table_is_grasped_across_from_above():
    radius = 0.0015
    points, normals = cylinder_cloud(radius, 0.10, radius)  # lying flat, touching the table at z = 0
    target = np.array([0.0, 0.0, 2 * radius])  # its top
    config = AntipodalConfig()
    sample_antipodal_grasps(points, normals, target, PANDA, config, table_z=0.0)  # warm up
    start = time.perf_counter()
    grasps = sample_antipodal_grasps(points, normals, target, PANDA, config, table_z=0.0)
    assert time.perf_counter() - start < 1.0  # 20k points
    assert len(grasps.scores) >= 1
    best = grasps.T_base_tcp[0]
    assert grasps.widths[0] == pytest.approx(2 * radius, abs=0.001)
    assert abs(best[0, 1]) < 0.1 and abs(best[2, 1]) < 0.05  # closing across the wire, level
    assert best[2, 2] < -np.cos(np.radians(config.max_tilt_deg))  # from above
    assert grasps.contact_points[0] >= config.min_contact_points
    # The clearance rule: fingertips down to table_clearance_m, below the wire's widest point.
    tips = hand_lowest_z(best, grasps.openings[0])
    assert config.table_clearance_m - 1e-9 <= tips < radius
    # A wire thinner than twice the clearance cannot be held that way: the table is the reason.
    thin, thin_normals = cylinder_cloud(0.0008, 0.10, 0.0008)
    with pytest.raises(GraspError, match="collide with the table"):
        sample_antipodal_grasps(thin, thin_normals, np.array([0.0, 0.0, 0.0016]), PANDA, config, table_z=0.0)


def _fork_tines(mesh):
    """The fork's tines (segments along x beyond its cross-bar, the segment along y), by y."""
    direction = mesh.segments[:, 1] - mesh.segments[:, 0]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    bar = mesh.segments[np.argmax(np.abs(direction[:, 1]))]
    beyond = mesh.segments[:, :, 0].min(1) >= bar[:, 0].min() - 1e-6
    tines = mesh.segments[(np.abs(direction[:, 0]) > 0.9) & beyond]
    return tines[np.argsort(tines.mean(1)[:, 1])]


def _box_body(bullet, client, T, box):
    shape = bullet.createCollisionShape(bullet.GEOM_BOX, halfExtents=box.half.tolist(), physicsClientId=client)
    position = T[:3, :3] @ box.centre + T[:3, 3]
    quaternion = matrix_to_quat_xyzw(T[:3, :3]).tolist()
    return bullet.createMultiBody(
        0, shape, basePosition=position.tolist(), baseOrientation=quaternion, physicsClientId=client
    )


def _penetration(bullet, client, body, probe) -> float:
    """The deepest penetration between two bodies (m, > 0 when they overlap, 0 when apart)."""
    points = bullet.getClosestPoints(body, probe, 0.0, physicsClientId=client)
    return max([-p[8] for p in points] + [0.0])


def test_thin_objects_collide_per_wire_segment_and_a_grasp_clears_them(tmp_path):
    import open3d as o3d
    import pybullet

    from nerf_descriptor_ros.grasping.gripper import Box
    from nerf_descriptor_ros.sim.thin_objects import make_thin_object, write_thin_object

    mesh = make_thin_object("fork", seed=1)
    urdf = write_thin_object(tmp_path, "fork", seed=1)
    # The old single-mesh collision, which pybullet turns into the mesh's convex hull.
    hull = tmp_path / "fork_hull.urdf"
    text = urdf.read_text()
    start, end = text.index("    <collision>"), text.rindex("</collision>") + len("</collision>")
    hull.write_text(
        text[:start] + f'<collision><geometry><mesh filename="{urdf.stem}.obj"/></geometry></collision>' + text[end:]
    )
    tines = _fork_tines(mesh)
    assert len(tines) >= 3
    a, b = tines[-1], tines[-2]  # the two tines at the largest y
    gap_point = (a.mean(0) + b.mean(0)) / 2
    gap = abs(a.mean(0)[1] - b.mean(0)[1]) - 2 * mesh.radii.min()  # the tines are the thinnest wire
    assert gap > 0.002
    client = pybullet.connect(pybullet.DIRECT)
    try:
        body = pybullet.loadURDF(str(urdf), useFixedBase=True, physicsClientId=client)
        blob = pybullet.loadURDF(str(hull), [0, 0, 0], useFixedBase=True, physicsClientId=client)
        shapes = pybullet.getCollisionShapeData(body, -1, physicsClientId=client)
        assert len(shapes) == len(mesh.segments) > 1
        assert all(s[2] == pybullet.GEOM_CAPSULE for s in shapes)
        assert len(pybullet.getCollisionShapeData(blob, -1, physicsClientId=client)) == 1
        pybullet.resetBasePositionAndOrientation(blob, [0, 0, 1.0], [0, 0, 0, 1], physicsClientId=client)
        # A vertical ray down through the gap between two tines: empty space now, the hull before.
        top, bottom = gap_point + [0, 0, 0.05], gap_point - [0, 0, 0.05]
        assert pybullet.rayTest(top.tolist(), bottom.tolist(), physicsClientId=client)[0][0] == -1
        hit = pybullet.rayTest((top + [0, 0, 1.0]).tolist(), (bottom + [0, 0, 1.0]).tolist(), physicsClientId=client)
        assert hit[0][0] == blob
        # A probe (a 5 mm finger pad seen edge-on) in the gap touches nothing; on the hull it is inside.
        probe_box = Box(np.zeros(3), np.array([0.0025, gap / 2 - 0.0005, 0.0025]))
        T = np.eye(4)
        T[:3, 3] = gap_point
        probe = _box_body(pybullet, client, T, probe_box)
        assert _penetration(pybullet, client, body, probe) == 0.0
        T[2, 3] += 1.0
        probe_on_hull = _box_body(pybullet, client, T, probe_box)
        assert _penetration(pybullet, client, blob, probe_on_hull) > 0.001
        T[:3, 3] = a.mean(0)  # and the same probe on a tine does collide
        on_tine = _box_body(pybullet, client, T, probe_box)
        assert _penetration(pybullet, client, body, on_tine) > 0.0005

        # A grasp sampled from the fork's surface points clears the per-segment shapes in pybullet,
        # with the tine between its fingers.
        surface = o3d.geometry.TriangleMesh(
            o3d.utility.Vector3dVector(mesh.vertices), o3d.utility.Vector3iVector(mesh.faces)
        )
        surface.compute_vertex_normals()  # smooth, as normals estimated from live depth are
        cloud = surface.sample_points_uniformly(20_000)
        points, normals = np.asarray(cloud.points), np.asarray(cloud.normals)
        grasps = sample_antipodal_grasps(points, normals, a.mean(0), PANDA, AntipodalConfig(), table_z=0.0)
        T_best, opening = grasps.T_base_tcp[0], grasps.openings[0]
        for name, box in gripper_boxes(PANDA, opening).items():
            part = _box_body(pybullet, client, T_best, Box(box.centre, box.half - 0.0005))
            assert _penetration(pybullet, client, body, part) == 0.0, f"the {name} collides with the fork"
        # The fingers close on the fork: it reaches into the slab a millimetre about the line between the pads
        # (a single ray there can pass beside a 2 mm tine: the centre comes from randomly sampled surface points).
        closing = Box(np.zeros(3), np.array([0.001, opening / 2, 0.001]))
        between = T_best.copy()
        between[:3, 3] = grasps.centres[0]
        assert _penetration(pybullet, client, body, _box_body(pybullet, client, between, closing)) > 0.0
    finally:
        pybullet.disconnect(client)


def test_a_grasp_backs_off_from_the_floor_only_as_far_as_its_centre_stays_between_the_pads():
    from nerf_descriptor_ros.grasping.gripper import clear_of_floor

    down = np.eye(4)
    down[:3, :3] = np.diag([1.0, -1.0, -1.0])  # approach straight down
    tip = PANDA.tip_past_tcp_m
    for depth, tcp_z, expected in ((0.0, 0.0, True), (0.0, 0.005, True), (0.0, 0.05, True), (0.0, -0.001, False)):
        T = down.copy()[None]
        T[0, 2, 3] = tcp_z
        clear = clear_of_floor(T, np.array([0.04]), PANDA, 0.0, depth)[0]
        assert clear == expected, (depth, tcp_z)
        if clear:
            assert T[0, 2, 3] == pytest.approx(max(tcp_z, tip))  # fingertips down to the floor, no further
    # A TCP planned 2 cm past its grasp centre may back off 2 cm more.
    T = down.copy()[None]
    T[0, 2, 3] = -0.02
    assert not clear_of_floor(T.copy(), np.array([0.04]), PANDA, 0.0)[0]
    assert clear_of_floor(T, np.array([0.04]), PANDA, 0.0, 0.02)[0] and T[0, 2, 3] == pytest.approx(tip)
