"""A sweep view the arm cannot reach is replaced by the nearest one it can: the viewpoint moved a
little along the cap at the same distance, upright, or else turned about the optical axis."""

import numpy as np

from nerf_descriptor_ros.sim import SimConfig, SimWorld
from nerf_descriptor_ros.sim.views import hemisphere_views, replanned_views

CENTER = np.array([0.45, 0.05, 0.03])


def _elevation_deg(view, center):
    offset = view[:3, 3] - center
    return np.degrees(np.arcsin(offset[2] / np.linalg.norm(offset)))


def _azimuth_deg(view, center):
    offset = view[:3, 3] - center
    return np.degrees(np.arctan2(offset[1], offset[0]))


def test_replanned_views_keep_the_distance_and_the_target_and_come_nearest_first():
    view = hemisphere_views(CENTER, 1, 0.35, 30.0, 30.0, start_azimuth_deg=40.0)[0]
    alternatives = replanned_views(view, CENTER, 25.0, 45.0)
    assert len(alternatives) > 10
    for T in alternatives:
        np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
        assert abs(np.linalg.norm(T[:3, 3] - CENTER) - 0.35) < 1e-9  # the planned distance
        to_center = (CENTER - T[:3, 3]) / np.linalg.norm(CENTER - T[:3, 3])
        np.testing.assert_allclose(T[:3, 2], to_center, atol=1e-9)  # still looking at the object
        assert 25.0 - 1e-6 <= _elevation_deg(T, CENTER) <= 45.0 + 1e-6  # within the sweep's range
    # First the viewpoint moved ever further, upright (image x level); then turned about the axis.
    level = [abs(T[:3, 0] @ [0.0, 0.0, 1.0]) < 1e-9 for T in alternatives]
    upright = level.index(False)
    assert upright > 4 and not any(level[upright:]), "every upright view comes before every turned one"
    steps = [abs(_elevation_deg(T, CENTER) - 30.0) + abs(_azimuth_deg(T, CENTER) - 40.0) for T in alternatives]
    assert np.all(np.diff(steps[:upright]) > -1e-6), "nearest first"
    assert max(steps) <= 40.0 + 1e-6  # at most 20 degrees in elevation and in azimuth
    np.testing.assert_allclose(alternatives[upright][:3, 3], view[:3, 3], atol=1e-12)  # the view itself, turned
    assert abs(alternatives[upright][:3, 0] @ view[:3, 0]) < 1e-9  # by 90 degrees
    assert not any(np.allclose(T, view) for T in alternatives)
    # At the top of the range, no alternative goes above it.
    top = hemisphere_views(CENTER, 1, 0.35, 45.0, 45.0)[0]
    assert all(_elevation_deg(T, CENTER) <= 45.0 + 1e-6 for T in replanned_views(top, CENTER, 25.0, 45.0))


def test_views_the_arm_cannot_reach_are_replanned_to_ones_it_can():
    with SimWorld(SimConfig(width=160, height=120)) as world:
        center = world.object_center()
        views = hemisphere_views(center, 64, 0.4, 25.0, 70.0)  # far: the far side is out of reach
        unreachable = [view for view in views if not world.solve_camera_ik(view).success]
        assert len(unreachable) >= 4, "the test needs views out of reach"
        replanned = [
            any(world.solve_camera_ik(T).success for T in replanned_views(view, center, 25.0, 70.0))
            for view in unreachable
        ]
    assert np.mean(replanned) >= 0.9, f"{sum(replanned)} of {len(unreachable)} unreachable views replanned"
