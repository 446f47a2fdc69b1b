"""Viewpoints on a hemisphere cap around an object, ordered so that the arm travels little."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from nerf_descriptor_ros.geometry import CameraIntrinsics, invert, look_at, rpy_deg_to_matrix, transform_points

# Live views (the demo's trials, the any-point keypoint metric) look down at the object from this
# elevation range (degrees above the table), from any azimuth, as far as the capture looked.
LIVE_ELEVATION_RANGE_DEG = (45.0, 75.0)

# A sweep visits its views one by one in real time; more than this is a mistake, and planning
# billions of views (ViewSweep.num_views is a uint32) would hold the arm for hours.
MAX_VIEWS = 10_000


# How the sim robot's view sweep frames an object unless told otherwise: its bounding sphere spans
# this fraction of the narrower field of view, at a distance clamped to the range, where the arm
# can still circle the object. The sweep capture of the benchmarks frames objects the same way.
SWEEP_FILL_FRACTION = 0.5
SWEEP_RADIUS_RANGE_M = (0.15, 0.4)


def sweep_distance(
    object_radius: float,
    intrinsics: CameraIntrinsics,
    fill_fraction: float = SWEEP_FILL_FRACTION,
    radius_range_m: tuple[float, float] = SWEEP_RADIUS_RANGE_M,
) -> float:
    """The view sweep's camera distance: :func:`framing_distance`, clamped to ``radius_range_m``."""
    return float(np.clip(framing_distance(object_radius, intrinsics, fill_fraction), *radius_range_m))


def framing_distance(object_radius: float, intrinsics: CameraIntrinsics, fill_fraction: float) -> float:
    """Distance at which a sphere of ``object_radius`` spans ``fill_fraction`` of the narrower view."""
    if not 0.0 < fill_fraction <= 1.0:
        raise ValueError(f"fill fraction must be in (0, 1], got {fill_fraction}")
    half_fov = min(np.arctan2(intrinsics.width / 2, intrinsics.fx), np.arctan2(intrinsics.height / 2, intrinsics.fy))
    return float(object_radius / np.sin(fill_fraction * half_fov))


def hemisphere_views(
    center,
    num_views: int,
    radius: float,
    min_elevation_deg: float,
    max_elevation_deg: float,
    start_azimuth_deg: float = 180.0,
    azimuth_span_deg: float = 360.0,
) -> list[np.ndarray]:
    """Camera-to-world poses (OpenCV axes) looking at ``center`` from ``radius`` away.

    Views lie on rings of constant elevation, from the highest ring down, with the number of views
    per ring proportional to its circumference so that they are evenly spread over the cap. Each
    ring is walked in the opposite direction to the one before (boustrophedon), so consecutive views
    are neighbours. Azimuth is measured about the world z axis from +x; ``start_azimuth_deg`` is
    where every ring starts (or, for a partial span, its centre). Image "up" is world up.
    """
    num_views = int(num_views)
    if not 1 <= num_views <= MAX_VIEWS:
        raise ValueError(f"num_views must be 1..{MAX_VIEWS}, got {num_views}")
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if not -90.0 < min_elevation_deg <= max_elevation_deg < 90.0:
        raise ValueError(
            "elevations must satisfy -90 < min <= max < 90 degrees, got "
            f"min={min_elevation_deg} max={max_elevation_deg}"
        )
    if not 0.0 < azimuth_span_deg <= 360.0:
        raise ValueError(f"azimuth span must be in (0, 360] degrees, got {azimuth_span_deg}")
    center = np.asarray(center, dtype=np.float64)
    e0, e1 = np.radians(min_elevation_deg), np.radians(max_elevation_deg)
    span = np.radians(azimuth_span_deg)

    # Spacing that covers the cap's area with num_views cells decides the number of rings.
    area = span * (np.sin(e1) - np.sin(e0))
    spacing = np.sqrt(area / num_views) if area > 0 else np.inf
    num_rings = int(np.clip(round((e1 - e0) / spacing), 1, num_views))
    ring_width = (e1 - e0) / num_rings
    elevations = e1 - ring_width * (np.arange(num_rings) + 0.5)
    counts = _split_proportionally(num_views, np.cos(elevations))

    full_circle = azimuth_span_deg >= 360.0
    poses = []
    for ring, (elevation, count) in enumerate(zip(elevations, counts)):
        if full_circle:
            offsets = span * np.arange(count) / count
        else:  # cell centres across the span
            offsets = span * ((np.arange(count) + 0.5) / count - 0.5)
        direction = 1.0 if ring % 2 == 0 else -1.0
        for offset in offsets:
            azimuth = np.radians(start_azimuth_deg) + direction * offset
            eye = center + radius * np.array(
                [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
            )
            poses.append(look_at(eye, center))
    return poses


# A view the arm cannot reach is replaced by the nearest one it can among these: the viewpoint
# moved along the cap by these steps, at the same distance, so the object stays framed as planned
# and the image stays upright; only then the same viewpoints turned about the optical axis (the
# wrist's limits), whose images a descriptor network trained on upright views matches less well.
REPLAN_ROLLS_DEG = (90.0, -90.0)
REPLAN_STEPS_DEG = (0.0, 10.0, -10.0, 20.0, -20.0)


def replanned_views(view: np.ndarray, center, min_elevation_deg: float, max_elevation_deg: float) -> list[np.ndarray]:
    """Alternatives to the camera pose ``view`` looking at ``center``, at its distance: moved in
    azimuth and elevation (staying in the elevation range) by :data:`REPLAN_STEPS_DEG`, nearest
    first, upright; then ``view`` and those turned about their optical axes by
    :data:`REPLAN_ROLLS_DEG`. ``view`` itself is not among them."""
    center = np.asarray(center, dtype=np.float64)
    offset = view[:3, 3] - center
    radius = float(np.linalg.norm(offset))
    elevation = np.degrees(np.arcsin(np.clip(offset[2] / radius, -1.0, 1.0)))
    azimuth = np.degrees(np.arctan2(offset[1], offset[0]))
    moves = sorted(
        ((de, da) for de in REPLAN_STEPS_DEG for da in REPLAN_STEPS_DEG),
        key=lambda move: (abs(move[0]) + abs(move[1]), abs(move[0])),
    )
    upright = []
    for de, da in moves:
        if not min_elevation_deg <= elevation + de <= max_elevation_deg:
            continue
        e, a = np.radians(elevation + de), np.radians(azimuth + da)
        eye = center + radius * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        upright.append(view if de == da == 0.0 else look_at(eye, center))
    turned = [T @ rpy_deg_to_matrix((0.0, 0.0, 0.0), (0.0, 0.0, roll)) for T in upright for roll in REPLAN_ROLLS_DEG]
    return upright[1:] + turned  # upright[0] is view itself


def _split_proportionally(total: int, weights: np.ndarray) -> list[int]:
    """``total`` items split by ``weights`` (largest remainders), at least one each."""
    weights = np.asarray(weights, dtype=np.float64)
    extra = total - len(weights)
    share = extra * weights / weights.sum()
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts))[: extra - counts.sum()]:
        counts[i] += 1
    return (counts + 1).tolist()


def live_view_distance(camera_positions: np.ndarray, center: np.ndarray) -> float:
    """The live views' distance from the object: the capture's median, so the object fills the
    view as it did in training."""
    return float(np.median(np.linalg.norm(np.asarray(camera_positions) - np.asarray(center), axis=1)))


def random_live_view(center, radius: float, rng: np.random.Generator) -> np.ndarray:
    """A camera pose as the live trials draw it: elevation uniform in LIVE_ELEVATION_RANGE_DEG,
    azimuth uniform, looking at ``center`` from ``radius``."""
    elevation = rng.uniform(*LIVE_ELEVATION_RANGE_DEG)
    return hemisphere_views(center, 1, radius, elevation, elevation, start_azimuth_deg=rng.uniform(0.0, 360.0))[0]


# Where live_views_of_new_placements puts the object: at new random placements (what the live
# trials do); left where it was captured; or at new placements with the light turned about the
# vertical as the object turned, so its shading is the capture's. The last two tell how much of a
# keypoint's error the placement costs, and how much of that is the light.
PLACEMENTS = ("new", "capture", "new_light_follows")


def live_views_of_new_placements(
    world,
    T_object_then: np.ndarray,
    center_then,
    radius: float,
    placements: int,
    views: int,
    seed: int,
    placement: str = "new",
):
    """Yield (placement seed, object pose, rendered frame): the object of ``world`` (a SimWorld) at
    ``placements`` random placements (seeds ``seed``, ``seed`` + 1, ...; see :data:`PLACEMENTS` for
    ``placement``), each seen from ``views`` reachable live views of its moved ``center_then``. A
    view the arm cannot reach is drawn again, at most 12 times per view."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r} unknown; choose one of {PLACEMENTS}")
    rng = np.random.default_rng(seed)
    light = tuple(world.config.light_direction)
    try:
        for number in range(placements):
            if placement == "capture":
                T_object_now = world.set_object_pose(T_object_then)
            else:
                T_object_now = world.place_object_random(seed + number)
            if placement == "new_light_follows":
                turned = T_object_now[:3, :3] @ T_object_then[:3, :3].T
                world.config = replace(world.config, light_direction=tuple(_about_vertical(turned) @ light))
            center_now = transform_points(T_object_now @ invert(T_object_then), np.asarray(center_then)[None])[0]
            reached = 0
            for _ in range(12 * views):
                if reached == views:
                    break
                solution = world.solve_camera_ik(random_live_view(center_now, radius, rng))
                if solution.success:
                    world.set_joint_positions(solution.joint_positions)
                    reached += 1
                    yield seed + number, T_object_now, world.render()
    finally:
        world.config = replace(world.config, light_direction=light)


def _about_vertical(rotation: np.ndarray) -> np.ndarray:
    """The turn about the base frame's z axis that ``rotation`` makes (its yaw), as a 3x3 matrix."""
    yaw = np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0]))
    return rpy_deg_to_matrix([0.0, 0.0, 0.0], [0.0, 0.0, yaw])[:3, :3]
