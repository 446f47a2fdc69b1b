"""The simulator's clutter and light settings (SimConfig.distractors, light_direction, light_color):
distractors stand apart around the object wherever it is placed, stay out of its mask, never move
and are avoided by the arm; the light changes colours, not geometry."""

import numpy as np
import pytest

from nerf_descriptor_ros.config import ConfigError
from nerf_descriptor_ros.geometry import transform_points
from nerf_descriptor_ros.sim import SimConfig, SimWorld
from nerf_descriptor_ros.sim.distractors import CLEARANCE_M
from nerf_descriptor_ros.sim.objects import body_frame_pose, set_body_frame_pose
from nerf_descriptor_ros.sim.views import random_live_view

DISTRACTORS = "cube_small.urdf, random_urdfs/042/042.urdf,objects/mug.urdf"


def _footprint(world, body, vertices):
    xy = transform_points(body_frame_pose(world.bullet, body), vertices)[:, :2]
    centre = (xy.min(0) + xy.max(0)) / 2
    return centre, float(np.linalg.norm(xy - centre, axis=1).max()), xy


def test_distractors_stand_apart_around_the_object_and_follow_it_repeatably():
    with SimWorld(SimConfig(width=64, height=48, distractors=DISTRACTORS, distractor_seed=4)) as world:
        assert [d.source for d in world.distractors] == [s.strip() for s in DISTRACTORS.split(",")]
        for seed in (1, 2):
            world.place_object_random(seed)
            target = _footprint(world, world.object_id, world._object_vertices)
            placed = [_footprint(world, d.body, d.vertices) for d in world.distractors]
            circles = [target[:2]] + [p[:2] for p in placed]
            for i in range(len(circles)):
                for j in range(i + 1, len(circles)):
                    gap = np.linalg.norm(circles[i][0] - circles[j][0]) - circles[i][1] - circles[j][1]
                    assert gap >= CLEARANCE_M - 1e-6, (seed, i, j, gap)
            for d, (centre, radius, _xy) in zip(world.distractors, placed):
                z = transform_points(body_frame_pose(world.bullet, d.body), d.vertices)[:, 2]
                assert abs(z.min()) < 1e-6  # resting on the table top
                assert np.linalg.norm(centre - target[0]) < target[1] + radius + 0.3  # near the object
                assert world.bullet.getDynamicsInfo(d.body, -1)[0] == 0.0  # static
            where = [body_frame_pose(world.bullet, d.body) for d in world.distractors]
            world.place_object_random(seed)
            again = [body_frame_pose(world.bullet, d.body) for d in world.distractors]
            assert all(np.allclose(a, b) for a, b in zip(where, again))


def test_distractors_are_seen_but_stay_out_of_the_object_mask_and_the_arm_avoids_them():
    plain, cluttered = SimConfig(width=96, height=72), SimConfig(width=96, height=72, distractors=DISTRACTORS)
    frames = []
    for config in (plain, cluttered):
        with SimWorld(config) as world:
            world.place_object_random(3)
            view = random_live_view(world.object_center(), 0.45, np.random.default_rng(0))
            ik = world.solve_camera_ik(view)
            assert ik.success, ik.message
            world.set_joint_positions(ik.joint_positions)
            frames.append(world.render())
            if world.distractors:
                # A distractor moved onto the hand: the arm's collision check names it.
                assert world._ik.collision(with_object=False) == ""
                d = world.distractors[0]
                T = np.eye(4)
                T[:3, 3] = world.hand_pose()[:3, 3]
                set_body_frame_pose(world.bullet, d.body, T)
                assert world._ik.collision(with_object=False) == "distractor"
    assert np.array_equal(frames[0].mask, frames[1].mask)
    assert np.abs(frames[0].rgb.astype(int) - frames[1].rgb.astype(int)).max() > 50  # the clutter is in the image


def test_the_light_changes_colours_but_not_depth_or_mask():
    frames = []
    for light in ({}, {"light_direction": (-0.6, 0.5, 0.6), "light_color": (1.0, 0.75, 0.5)}):
        with SimWorld(SimConfig(width=64, height=48, **light)) as world:
            view = random_live_view(world.object_center(), 0.3, np.random.default_rng(1))
            world.set_joint_positions(world.solve_camera_ik(view).joint_positions)
            frames.append(world.render())
    default, changed = frames
    assert np.array_equal(default.mask, changed.mask)
    assert np.allclose(default.depth, changed.depth, equal_nan=True)
    obj = default.mask
    assert obj.any() and np.abs(default.rgb[obj].astype(int) - changed.rgb[obj].astype(int)).mean() > 5


@pytest.mark.parametrize(
    "field, value",
    [("light_color", (1.5, 1.0, 1.0)), ("light_direction", (0.0, 0.0, 0.0)), ("light_direction", (np.nan, 0, 1))],
)
def test_a_light_out_of_range_is_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        SimConfig(**{field: value})


def test_live_view_placements_leave_the_object_or_turn_the_light_with_it_and_restore_the_light():
    from nerf_descriptor_ros.sim.views import live_views_of_new_placements

    with SimWorld(SimConfig(width=64, height=48)) as world:
        T_then = world.object_pose
        centre = world.object_center()
        light = tuple(world.config.light_direction)
        seen = list(live_views_of_new_placements(world, T_then, centre, 0.3, 2, 1, 7, "capture"))
        assert len(seen) == 2 and all(np.allclose(T_now, T_then, atol=1e-6) for _, T_now, _ in seen)
        lights, moved = [], []
        for _, T_now, _ in live_views_of_new_placements(world, T_then, centre, 0.3, 2, 1, 7, "new_light_follows"):
            lights.append(np.array(world.config.light_direction))
            moved.append(T_now)
        assert len(moved) == 2 and tuple(world.config.light_direction) == light  # restored
        for T_now, turned in zip(moved, lights):
            R = T_now[:3, :3] @ T_then[:3, :3].T
            yaw = np.arctan2(R[1, 0], R[0, 0])
            expected = np.array(
                [
                    np.cos(yaw) * light[0] - np.sin(yaw) * light[1],
                    np.sin(yaw) * light[0] + np.cos(yaw) * light[1],
                    light[2],
                ]
            )
            assert abs(yaw) > 0.05 and np.allclose(turned, expected)
        with pytest.raises(ValueError, match="placement"):
            next(live_views_of_new_placements(world, T_then, centre, 0.3, 1, 1, 7, "elsewhere"))
