"""Pick and lift in the simulated world: physics only while grasping, the object put back after."""

import numpy as np
import pytest

from nerf_descriptor_ros.geometry import pose_distance, transform_points
from nerf_descriptor_ros.sim import SimConfig, SimWorld
from nerf_descriptor_ros.sim.objects import resolve_object_model
from nerf_descriptor_ros.sim.scene import READY_ARM_POSITIONS

SMALL = dict(width=80, height=60)
PRE_GRASP_M, LIFT_M = 0.1, 0.1


def top_down_grasp(position, closing_yaw: float) -> np.ndarray:
    """TCP pose pointing straight down at ``position``, fingers closing along ``closing_yaw``."""
    T = np.eye(4)
    T[:3, 1] = [np.cos(closing_yaw), np.sin(closing_yaw), 0.0]
    T[:3, 2] = [0.0, 0.0, -1.0]
    T[:3, 0] = np.cross(T[:3, 1], T[:3, 2])
    T[:3, 3] = position
    return T


def grasp_at_center(world) -> np.ndarray:
    """A top-down grasp at the object's bounding-box centre, closing across its narrowest width."""
    points = transform_points(world.object_pose, world._object_vertices)[:, :2]
    yaws = np.linspace(0.0, np.pi, 36, endpoint=False)
    widths = [np.ptp(points @ [np.cos(yaw), np.sin(yaw)]) for yaw in yaws]
    return top_down_grasp(world.object_center(), yaws[int(np.argmin(widths))])


@pytest.fixture(scope="module")
def world():
    with SimWorld(SimConfig(object_source="cube_small.urdf", **SMALL)) as w:
        yield w


@pytest.fixture
def ready(world):
    """The cube at a seeded placement and the arm in its ready posture."""
    world.set_joint_positions(np.array(READY_ARM_POSITIONS))
    world.place_object_random(3)
    return world


def test_a_grasp_at_the_centre_lifts_the_cube_and_puts_it_back(ready):
    w = ready
    placed = w.object_pose
    seed = w.object_seed
    T_grasp = grasp_at_center(w)
    result = w.pick_and_lift(T_grasp, PRE_GRASP_M, LIFT_M)
    assert result.success, result.message
    assert result.object_lift_m == pytest.approx(LIFT_M, abs=0.01)
    # Afterwards: the object exactly where it was, still kinematic; the gripper open at the pre-grasp.
    assert np.allclose(w.object_pose, placed, atol=1e-12) and w.object_seed == seed
    assert not w.picking
    assert np.allclose(w.joint_positions[-2:], 0.04)
    T_pre = T_grasp.copy()
    T_pre[:3, 3] -= PRE_GRASP_M * T_grasp[:3, 2]
    assert pose_distance(w.tcp_pose(), T_pre)[0] < 1e-4
    # The same pick from the same start gives the same result (to the last bit when nothing came
    # between; pybullet's broad phase keeps some history, worth well under a micrometre).
    w.set_joint_positions(np.array(READY_ARM_POSITIONS))
    assert w.pick_and_lift(T_grasp, PRE_GRASP_M, LIFT_M).object_lift_m == result.object_lift_m
    w.place_object_random(4)
    assert w.pick_and_lift(grasp_at_center(w), PRE_GRASP_M, LIFT_M).success
    w.place_object_random(3)
    w.set_joint_positions(np.array(READY_ARM_POSITIONS))
    assert w.pick_and_lift(T_grasp, PRE_GRASP_M, LIFT_M).object_lift_m == pytest.approx(result.object_lift_m, abs=1e-6)


def test_the_object_rises_with_the_gripper_while_the_pick_runs(ready):
    """Stepped as the node steps it: the lift shows in the object's pose mid-way, and a pick
    stopped mid-way leaves the object where it was."""
    w = ready
    placed = w.object_pose
    assert w.start_pick(grasp_at_center(w), PRE_GRASP_M, LIFT_M) is None
    heights, result = [], None
    while result is None:
        result = w.step_pick(0.02)
        heights.append(w.object_pose[2, 3] - placed[2, 3])
    assert result.success, result.message
    assert max(heights) == pytest.approx(LIFT_M, abs=0.01)
    assert abs(heights[-1]) < 1e-9

    w.set_joint_positions(np.array(READY_ARM_POSITIONS))
    assert w.start_pick(grasp_at_center(w), PRE_GRASP_M, LIFT_M) is None
    while w.object_pose[2, 3] - placed[2, 3] < LIFT_M / 2:
        assert w.step_pick(0.02) is None
    assert w.start_pick(grasp_at_center(w), PRE_GRASP_M, LIFT_M).message.startswith("refused")
    w.stop_pick()
    assert not w.picking and np.allclose(w.object_pose, placed, atol=1e-12)


def test_a_grasp_beside_the_object_closes_on_nothing(ready):
    w = ready
    placed = w.object_pose
    beside = grasp_at_center(w)
    beside[:3, 3] += beside[:3, 0] * 0.10  # 10 cm off, across the closing direction
    result = w.pick_and_lift(beside, PRE_GRASP_M, LIFT_M)
    assert not result.success and "did not rise" in result.message
    assert abs(result.object_lift_m) < 0.005
    assert np.allclose(w.object_pose, placed, atol=1e-12)


def test_grasps_that_would_hit_the_table_or_make_no_sense_are_refused_and_nothing_moves(ready):
    w = ready
    before = w.joint_positions
    in_table = grasp_at_center(w)
    in_table[2, 3] = -0.02
    result = w.pick_and_lift(in_table, PRE_GRASP_M, LIFT_M)
    assert not result.success and result.message.startswith("unreachable") and "table" in result.message
    far = top_down_grasp([2.0, 0.0, 0.1], 0.0)
    result = w.pick_and_lift(far, PRE_GRASP_M, LIFT_M)
    assert not result.success and result.message.startswith("unreachable")
    bad = grasp_at_center(w)
    bad[0, 3] = np.nan
    for T, pre, lift in (
        (bad, PRE_GRASP_M, LIFT_M),
        (grasp_at_center(w), 0.0, LIFT_M),
        (grasp_at_center(w), PRE_GRASP_M, -0.1),
    ):
        result = w.pick_and_lift(T, pre, lift)
        assert not result.success and result.message.startswith("refused")
    assert np.allclose(w.joint_positions, before) and not w.picking


@pytest.mark.parametrize("source", ["duck_vhacd.urdf", "sphere_small.urdf"])
def test_a_grasp_at_the_centre_lifts_other_objects(world, source):
    world.load_object(resolve_object_model(source))
    try:
        world.set_joint_positions(np.array(READY_ARM_POSITIONS))
        world.place_object_random(2)
        result = world.pick_and_lift(grasp_at_center(world), PRE_GRASP_M, LIFT_M)
        assert result.success, result.message
    finally:
        world.load_object(resolve_object_model("cube_small.urdf"))


def test_the_approach_stops_on_an_object_too_wide_for_the_gripper(world):
    """The mug's body is a solid 82 mm cylinder and the fingers open to 80 mm: they land on it,
    and the arm stops there instead of pressing the mug into the table."""
    world.load_object(resolve_object_model("objects/mug.urdf"))
    try:
        world.set_joint_positions(np.array(READY_ARM_POSITIONS))
        placed = world.place_object_nominal()
        axis = placed[:3, 3] + [0.0, 0.0, 0.05]  # the body's axis, half way up (the mug is z-up)
        across_body = placed[:3, 0]  # the handle is along the mug's y
        assert (
            world.start_pick(top_down_grasp(axis, np.arctan2(across_body[1], across_body[0])), PRE_GRASP_M, LIFT_M)
            is None
        )
        lowest, result = 0.0, None
        while result is None:
            result = world.step_pick(0.02)
            lowest = min(lowest, world.object_bounds()[0][2])
        assert not result.success
        assert lowest > -2e-3  # never pushed into the table
    finally:
        world.load_object(resolve_object_model("cube_small.urdf"))


def test_a_static_object_cannot_be_lifted(tmp_path):
    urdf = tmp_path / "static_box.urdf"
    urdf.write_text("""<robot name="static_box"><link name="base">
      <inertial><mass value="0"/><inertia ixx="0" ixy="0" ixz="0" iyy="0" iyz="0" izz="0"/></inertial>
      <collision><geometry><box size="0.04 0.04 0.04"/></geometry></collision>
    </link></robot>""")
    with SimWorld(SimConfig(object_source=str(urdf), **SMALL)) as w:
        result = w.pick_and_lift(grasp_at_center(w), PRE_GRASP_M, LIFT_M)
        assert not result.success and "static" in result.message
