"""A simulated capture without ROS: the eye-in-hand camera sweeps a hemisphere cap around the object.

What the capture node records from the sim_robot node's view sweep, made directly with
:class:`SimWorld` and :class:`DatasetWriter`, for benchmarks that need a dataset with exact depth,
masks and camera poses (and ``ground_truth.json``, the scene as the simulator knows it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nerf_descriptor_ros.data.dataset import Dataset, DatasetWriter, atomic_write_json
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.sim.config import SimConfig
from nerf_descriptor_ros.sim.views import SWEEP_FILL_FRACTION, hemisphere_views, sweep_distance
from nerf_descriptor_ros.sim.world import SimWorld

# Each retry asks for this much more than the shortfall, so that one more pass usually suffices.
_DENSIFY_MARGIN = 1.05
_MAX_PASSES = 4


def capture_sweep_dataset(
    sim_config: SimConfig,
    out_dir: str | Path,
    num_views: int,
    placement_seed: int | None = None,
    radius_m: float | None = None,
    fill_fraction: float = SWEEP_FILL_FRACTION,
    min_elevation_deg: float = 25.0,
    max_elevation_deg: float = 70.0,
    metadata: dict | None = None,
) -> Dataset:
    """Render exactly ``num_views`` viewpoints the arm can reach on a hemisphere cap; write a dataset.

    The object stands at its nominal pose, or at the random placement ``placement_seed``. The
    cap's radius is ``radius_m``, or (None) the sim robot's sweep distance (:func:`sweep_distance`:
    the object spans ``fill_fraction`` of the view, at a distance the arm can circle), so that a
    benchmark sees what the capture node records. Viewpoints the arm cannot reach are skipped; the
    cap is sampled more densely until ``num_views`` are reachable, then thinned evenly to exactly
    that many, in sweep order. Every frame has RGB, metric depth and the object mask.
    """
    if num_views < 1:
        raise NerfDescriptorError(f"a sweep needs at least one view, got {num_views}")
    with SimWorld(sim_config) as world:
        if placement_seed is not None:
            world.place_object_random(placement_seed)
        radius = radius_m or sweep_distance(world.object_radius(), world.intrinsics, fill_fraction)
        requested, reachable = num_views, []
        for _ in range(_MAX_PASSES):
            reachable = [
                solution.joint_positions
                for solution in (
                    world.solve_camera_ik(target)
                    for target in hemisphere_views(
                        world.object_center(), requested, radius, min_elevation_deg, max_elevation_deg
                    )
                )
                if solution.success
            ]
            if len(reachable) >= num_views or not reachable:  # none: a denser cap will not help
                break
            requested = int(np.ceil(requested * num_views / max(len(reachable), 1) * _DENSIFY_MARGIN))
        if len(reachable) < num_views:
            raise NerfDescriptorError(
                f"the arm reaches only {len(reachable)} of {num_views} viewpoints {radius:.3f} m "
                f"around {sim_config.object_source}: ask for fewer views, another radius or "
                "elevation range"
            )
        writer = DatasetWriter(
            out_dir,
            metadata={"object_name": Path(out_dir).name, "object_source": sim_config.object_source, **(metadata or {})},
        )
        for index in np.round(np.linspace(0, len(reachable) - 1, num_views)).astype(int):
            world.set_joint_positions(reachable[index])
            frame = world.render()
            writer.add_frame(frame.rgb, frame.T_base_cam, world.intrinsics, depth_m=frame.depth, mask=frame.mask)
        atomic_write_json(Path(out_dir) / "ground_truth.json", world.ground_truth())
    return Dataset.load(out_dir)
