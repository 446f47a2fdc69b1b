"""Antipodal grasps near a keypoint, checked against the gripper's geometry (GPD / Dex-Net style).

Input: the object's surface as points with outward unit normals in the robot's base frame (live
depth inside the object mask, back-projected, or points sampled from a mesh), the keypoint, and
optionally the height of the table plane. Steps, all vectorised:

1. ``num_samples`` surface points within ``search_radius_m`` of the keypoint are first contacts.
2. For each, the opposite contact is a point within ``line_radius_m`` of the line into the
   surface (against its normal) such that the line between the two contacts lies within the
   friction cone (``friction_cone_deg``) of both normals: the best aligned such point on the
   nearest surface the line leaves the object through. The distance is the width, the midpoint
   the grasp centre; the closing axis is that line, turned towards the horizontal as far as both
   friction cones allow (so that the hand can come straight down, both fingers level).
3. Approach directions are rotations about the closing axis: ``approaches_per_contact`` of them,
   spread over the arc that stays within ``max_tilt_deg`` of straight down.
4. The hand (gripper.py's finger and palm boxes) is placed with its TCP at the grasp centre, the
   fingers opened to the max opening (``open_fully``, as the simulator's pick opens them) or to
   the width plus clearance. A candidate is rejected, in this order, when no opposite contact
   exists, when it is wider than the max opening less twice ``finger_clearance_m``, when no
   approach is within the tilt limit, when it collides with the table, when a finger or the
   palm holds object points, or when fewer than ``min_contact_points`` object points lie between
   the finger pads.
5. The hand is also tried pushed further along the approach, up to ``grasp_depth_m`` past the
   grasp centre (GPD's "push until contact"), and each candidate keeps the deepest placement that
   passes every check: contacts found near a top edge (a knob, a rim) are otherwise held by the
   last millimetres of the pads, and the object turns out of them. A candidate none of whose
   placements passes is counted under the shallowest one's rejection.

The table rule: every part of the hand stays ``table_clearance_m`` above the table plane. When
the fingertips (which reach ``GripperConfig.tip_past_tcp_m`` past the TCP) would go lower, the
hand backs off along the approach, but only as long as the grasp centre stays between the
fingertips and the palm. A wire lying on the table is thus graspable from above when its radius
exceeds ``table_clearance_m``: the fingertips come down to the clearance and the pads still reach
below the wire's widest point.

Every rejection counts candidates (a contact sample rejected before its approaches are made
counts ``approaches_per_contact`` times), so the counts and the grasps found add up to the first
contacts (``num_samples``, fewer when fewer points are near) times ``approaches_per_contact``.
Poses follow planner.py: +z approach, +y closing.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from nerf_descriptor_ros.config import ConfigError, described
from nerf_descriptor_ros.grasping.gripper import GripperConfig, clear_of_floor, gripper_boxes
from nerf_descriptor_ros.grasping.planner import GraspError

# Rejection causes, in the order they are checked, with the words a log line uses for each.
REJECTIONS = {
    "no_opposite_contact": "have no opposite contact within the friction cone",
    "too_wide": "are wider than the gripper opens",
    "tilt": "cannot approach within the tilt limit",
    "table_collision": "collide with the table",
    "object_collision": "collide with the object",
    "few_contacts": "hold too few object points between the fingers",
}
# Score terms (each in [0, 1]) and their weights: antipodality (how far inside the friction
# cones), a vertical approach, a grasp centre near the keypoint, points between the fingers.
SCORE_WEIGHTS = {"antipodal": 1.0, "vertical": 0.5, "near": 1.0, "contacts": 0.5}
OPPOSITE_REACH = 2.0  # opposite contacts are looked for up to this many max openings deep
MIN_WIDTH_M = 5e-4  # an opposite contact closer than this is the same surface
COLLISION_TOLERANCE_M = 5e-4  # object points this close inside a box's faces are surface noise
CHUNK_ELEMENTS = 2_000_000  # (candidates x points) per vectorised block, to bound memory
GRASP_DEPTH_STEPS = 4  # placements past the grasp centre tried besides it, evenly up to grasp_depth_m
DOWN = np.array([0.0, 0.0, -1.0])


@dataclass
class AntipodalConfig:
    search_radius_m: float = described(0.02, "first contacts are sampled within this distance of the keypoint (m)")
    num_samples: int = described(100, "surface points sampled as first contacts")
    approaches_per_contact: int = described(
        5, "approach directions tried per contact pair, rotations about the closing axis within the tilt limit"
    )
    friction_cone_deg: float = described(
        20.0, "friction cone half-angle: the closing line must be within this of both contact normals (deg)"
    )
    line_radius_m: float = described(0.002, "an opposite contact lies within this distance of the closing line (m)")
    min_contact_points: int = described(5, "fewest object points between the finger pads")
    max_tilt_deg: float = described(30.0, "the approach is tilted at most this much from straight down (deg)")
    finger_clearance_m: float = described(
        0.004, "free space a finger needs beside the object: wider than max opening less twice this is too wide (m)"
    )
    open_fully: bool = described(
        True,
        "check the fingers opened to the max opening (as the simulator's pick opens them), else to the "
        "grasp's width plus twice finger_clearance_m",
    )
    table_clearance_m: float = described(0.001, "the hand, fingertips included, stays this far above the table (m)")
    grasp_depth_m: float = described(
        0.02,
        "the hand is also tried up to this far past the contacts' midpoint along the approach, in "
        "a few even steps; the deepest placement free of collisions is kept (m)",
    )
    seed: int = described(0, "seed of the contact sampling")

    def __post_init__(self):
        for name in ("search_radius_m", "friction_cone_deg", "line_radius_m"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        for name in ("num_samples", "approaches_per_contact"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)!r}")
        for name in ("min_contact_points", "finger_clearance_m", "table_clearance_m", "grasp_depth_m"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        if not self.friction_cone_deg < 90.0:
            raise ConfigError(f"friction_cone_deg: must be in (0, 90), got {self.friction_cone_deg}")
        if not 0.0 <= self.max_tilt_deg <= 90.0:
            raise ConfigError(f"max_tilt_deg: must be in [0, 90], got {self.max_tilt_deg}")


@dataclass
class AntipodalGrasps:
    """Grasps best first; ``rejections`` counts the candidates refused, by cause (REJECTIONS)."""

    T_base_tcp: np.ndarray  # (K, 4, 4): +z approach, +y closing, TCP between the finger pads
    scores: np.ndarray  # (K,) in [0, 1], higher is better
    widths: np.ndarray  # (K,) the object's extent along the closing axis between the fingers (m)
    openings: np.ndarray  # (K,) how far apart the fingers were checked (m)
    contact_points: np.ndarray  # (K,) object points between the finger pads
    centres: np.ndarray  # (K, 3) midpoints of the two contacts
    rejections: dict[str, int] = field(default_factory=dict)

    @property
    def candidates(self) -> int:
        return len(self.scores) + sum(self.rejections.values())

    def summary(self) -> str:
        """One line, e.g. '3 grasps of 500 candidates; 12 are wider than the gripper opens, ...'."""
        return f"{len(self.scores)} grasps of {self.candidates} candidates" + "".join(
            f"; {n} {REJECTIONS[cause]}" for cause, n in self.rejections.items() if n
        )


def sample_antipodal_grasps(
    points: np.ndarray,
    normals: np.ndarray,
    target: np.ndarray,
    gripper: GripperConfig = GripperConfig(),
    config: AntipodalConfig = AntipodalConfig(),
    table_z: float | None = None,
) -> AntipodalGrasps:
    """Antipodal grasps near ``target`` on the surface ``points`` (N, 3) with outward unit
    ``normals`` (N, 3), base frame; ``table_z`` is the table plane's height, None for no table.
    Raises GraspError (naming the most frequent rejection) when no candidate survives."""
    points, normals = _clean(points, normals)
    target = np.asarray(target, dtype=np.float64)
    if target.shape != (3,) or not np.all(np.isfinite(target)):
        raise GraspError(f"the grasp target {target.tolist()} is not a finite 3D point")
    near = np.flatnonzero(np.linalg.norm(points - target, axis=1) <= config.search_radius_m)
    if not len(near):
        raise GraspError(f"no object points within search_radius_m {config.search_radius_m} m of the grasp target")
    rng = np.random.default_rng(config.seed)
    first = rng.choice(near, size=min(config.num_samples, len(near)), replace=False)
    K = config.approaches_per_contact
    rejections = dict.fromkeys(REJECTIONS, 0)

    # Contact pairs: the opposite contact of each first contact, and how antipodal the pair is.
    cone = math.radians(config.friction_cone_deg)
    reach = OPPOSITE_REACH * gripper.max_opening_m  # wider parts are found, to count as too wide
    opposite = _opposite_contacts(points, normals, first, config.line_radius_m, math.cos(cone), reach)
    found = opposite >= 0
    rejections["no_opposite_contact"] = K * int((~found).sum())
    a, b = first[found], opposite[found]
    width = np.linalg.norm(points[b] - points[a], axis=1)
    fits = width <= gripper.max_opening_m - 2 * config.finger_clearance_m
    rejections["too_wide"] = K * int((~fits).sum())
    a, b, width = a[fits], b[fits], width[fits]
    closing, antipodal = _levelled_closing(points[a], normals[a], points[b], normals[b], cone)
    centre = (points[a] + points[b]) / 2

    # Approaches: rotations about each closing axis within the tilt limit (K per pair).
    approach, ok = _approaches(closing, K, config.max_tilt_deg)
    rejections["tilt"] = K * int((~ok).sum())
    pair = np.repeat(np.flatnonzero(ok), K)
    approach = approach[ok].reshape(-1, 3)
    y = closing[pair]
    T = np.zeros((len(pair), 4, 4))
    T[:, :3, 0], T[:, :3, 1], T[:, :3, 2] = np.cross(y, approach), y, approach
    T[:, :3, 3], T[:, 3, 3] = centre[pair], 1.0
    if config.open_fully:
        opening = np.full(len(pair), gripper.max_opening_m)
    else:
        opening = np.minimum(width[pair] + 2 * config.finger_clearance_m, gripper.max_opening_m)

    T, opening, pair, count, span = _deepest_placements(T, opening, pair, points, gripper, config, table_z, rejections)
    if not len(T):
        cause = max(rejections, key=rejections.get)
        raise GraspError(
            f"no grasp fits the gripper near the target: most of {len(first) * K} candidates {REJECTIONS[cause]} "
            f"({', '.join(f'{n} {c}' for c, n in rejections.items() if n)})"
        )

    tilt = np.arccos(np.clip(T[:, :3, 2] @ DOWN, -1.0, 1.0))
    distance = np.linalg.norm(centre[pair] - target, axis=1)
    terms = {
        "antipodal": np.clip(antipodal[pair], 0.0, 1.0),
        "vertical": np.cos(tilt),
        "near": 1.0 / (1.0 + distance / config.search_radius_m),
        "contacts": count / (count + max(config.min_contact_points, 1)),
    }
    score = sum(SCORE_WEIGHTS[k] * v for k, v in terms.items()) / sum(SCORE_WEIGHTS.values())
    order = np.argsort(-score, kind="stable")
    return AntipodalGrasps(
        T[order], score[order], span[order], opening[order], count[order], centre[pair][order], rejections
    )


def _deepest_placements(T, opening, pair, points, gripper, config, table_z, rejections):
    """Each candidate at its deepest placement (step 5 of the module docstring) that clears the
    table, holds no object point in the hand and enough between the pads: (T, opening, pair,
    contact count, span) of the candidates that have one; ``rejections`` counts the others."""
    depths = np.linspace(0.0, config.grasp_depth_m, GRASP_DEPTH_STEPS + 1 if config.grasp_depth_m > 0 else 1)
    n = len(T)
    placed = np.repeat(T[None], len(depths), 0)  # (depths, n, 4, 4)
    placed[..., :3, 3] += depths[:, None, None] * T[None, :, :3, 2]
    placed = placed.reshape(-1, 4, 4)
    placed_opening = np.tile(opening, len(depths))
    floor = np.ones(len(placed), dtype=bool)
    if table_z is not None:
        floor_z = float(table_z) + config.table_clearance_m
        floor = clear_of_floor(placed, placed_opening, gripper, floor_z, np.repeat(depths, n))
    collides = np.ones(len(placed), dtype=bool)
    count = np.zeros(len(placed), dtype=np.int64)
    span = np.zeros(len(placed))
    collides[floor], count[floor], span[floor] = _hand_against_points(
        placed[floor], placed_opening[floor], gripper, points
    )
    passes = (floor & ~collides & (count >= config.min_contact_points)).reshape(len(depths), n)
    shallowest = slice(0, n)
    if table_z is not None:
        rejections["table_collision"] = int((~floor[shallowest] & ~passes.any(0)).sum())
    failed = floor[shallowest] & ~passes.any(0)
    rejections["object_collision"] = int((failed & collides[shallowest]).sum())
    rejections["few_contacts"] = int((failed & ~collides[shallowest]).sum())
    ok = passes.any(0)
    deepest = len(depths) - 1 - np.argmax(passes[::-1], axis=0)  # per candidate, where ok
    index = deepest[ok] * n + np.flatnonzero(ok)
    return placed[index], placed_opening[index], pair[ok], count[index], span[index]


def _clean(points, normals) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(points, dtype=np.float64)
    normals = np.asarray(normals, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or normals.shape != points.shape:
        raise GraspError(f"expected (N, 3) points and normals, got {points.shape} and {normals.shape}")
    length = np.linalg.norm(normals, axis=1)
    good = np.isfinite(points).all(1) & np.isfinite(length) & (length > 1e-9)
    return points[good], normals[good] / length[good, None]


def _opposite_contacts(points, normals, first, line_radius, cone_cos, reach) -> np.ndarray:
    """For each first contact, the index of its opposite contact, -1 for none: of the points
    within ``line_radius`` of the line into the surface (up to ``reach`` deep) whose line to the
    first contact is inside both friction cones, the best aligned of those on the nearest surface
    (within twice ``line_radius`` of the nearest one's depth)."""
    # The points near each line: balls of radius line_radius * sqrt(2) every 2 * line_radius along
    # it cover the cylinder of radius line_radius around it.
    steps = np.arange(0.0, reach + 2 * line_radius, 2 * line_radius)
    centres = points[first][:, None] - normals[first][:, None] * steps[None, :, None]
    found = cKDTree(points).query_ball_point(centres.reshape(-1, 3), math.sqrt(2.0) * line_radius)
    lengths = np.fromiter((len(f) for f in found), dtype=np.int64, count=len(found))
    rows = np.fromiter(itertools.chain.from_iterable(found), dtype=np.int64, count=int(lengths.sum()))
    cols = np.repeat(np.arange(len(first)), len(steps))
    cols = np.repeat(cols, lengths)  # the first contact each found point belongs to
    p, n = points[first[cols]], normals[first[cols]]
    v = points[rows] - p
    t = -np.einsum("ck,ck->c", v, n)  # along the inward normal at the first contact
    dist = np.maximum(np.linalg.norm(v, axis=1), 1e-12)
    cos_first = t / dist  # the line to the point vs the inward normal at the first contact
    cos_second = np.einsum("ck,ck->c", v, normals[rows]) / dist  # ... vs the outward normal at the point
    ok = (t > MIN_WIDTH_M) & (dist**2 - t**2 <= line_radius**2) & (cos_first >= cone_cos) & (cos_second >= cone_cos)
    rows, cols, t, alignment = rows[ok], cols[ok], t[ok], np.minimum(cos_first, cos_second)[ok]
    nearest = np.full(len(first), np.inf)
    np.minimum.at(nearest, cols, t)
    same_surface = t <= nearest[cols] + 2 * line_radius
    rows, cols, alignment = rows[same_surface], cols[same_surface], alignment[same_surface]
    order = np.lexsort((-alignment, cols))  # by first contact, best aligned first
    firsts, at = np.unique(cols[order], return_index=True)
    opposite = np.full(len(first), -1)
    opposite[firsts] = rows[order][at]
    return opposite


def _levelled_closing(p, n_p, q, n_q, cone: float) -> tuple[np.ndarray, np.ndarray]:
    """Closing axes from the contacts ``p`` to ``q`` (outward normals ``n_p``, ``n_q``), turned
    towards the horizontal as far as both friction cones allow (a level axis lets the hand come
    straight down and keeps both fingers off the table), and each axis's antipodality: 1 on both
    normals, 0 at the edge of a cone."""
    closing = (q - p) / np.linalg.norm(q - p, axis=1, keepdims=True)

    def worst_angle(axis):
        cos = np.minimum(np.einsum("ck,ck->c", axis, -n_p), np.einsum("ck,ck->c", axis, n_q))
        return np.arccos(np.clip(cos, -1.0, 1.0))

    level = closing * np.array([1.0, 1.0, 0.0])
    towards = level - np.einsum("ck,ck->c", level, closing)[:, None] * closing  # in the plane of both
    length = np.linalg.norm(towards, axis=1)
    tilt = np.arcsin(np.clip(np.abs(closing[:, 2]), 0.0, 1.0))
    turn = np.where(length > 1e-9, np.clip(np.minimum(tilt, cone - worst_angle(closing)), 0.0, None), 0.0)
    towards = towards / np.maximum(length, 1e-12)[:, None]
    closing = np.cos(turn)[:, None] * closing + np.sin(turn)[:, None] * towards
    return closing, 1.0 - worst_angle(closing) / cone


def _approaches(closing: np.ndarray, K: int, max_tilt_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """(P, K, 3) approach directions perpendicular to each closing axis, spread over the rotations
    about it that stay within ``max_tilt_deg`` of straight down, and (P,) whether any does."""
    best = DOWN - (closing @ DOWN)[:, None] * closing  # the most downward perpendicular
    norm = np.linalg.norm(best, axis=1)
    vertical = norm < 1e-9  # a vertical closing axis: every perpendicular is horizontal
    fallback = np.cross(closing, [1.0, 0.0, 0.0])
    fallback[np.linalg.norm(fallback, axis=1) < 1e-6] = [0.0, 1.0, 0.0]
    best = np.where(vertical[:, None], fallback, best)
    best /= np.linalg.norm(best, axis=1, keepdims=True)
    side = np.cross(closing, best)
    cos_best = np.clip(best @ DOWN, 0.0, 1.0)  # cos of the smallest reachable tilt
    limit = math.radians(max_tilt_deg)
    ok = np.arccos(cos_best) <= limit + 1e-9
    half_arc = np.arccos(np.clip(math.cos(limit) / np.maximum(cos_best, 1e-12), -1.0, 1.0))
    half_arc[cos_best < 1e-9] = math.pi  # a vertical closing axis: all around, or none (ok)
    if K == 1:
        phi = np.zeros((len(closing), 1))
    else:
        phi = half_arc[:, None] * np.linspace(-1.0, 1.0, K)[None]
        full = half_arc >= math.pi - 1e-6  # the whole circle: no need to visit -pi and pi twice
        phi[full] = np.linspace(-math.pi, math.pi, K, endpoint=False)
    approach = np.cos(phi)[..., None] * best[:, None] + np.sin(phi)[..., None] * side[:, None]
    return approach, ok


def _hand_against_points(T, opening, gripper: GripperConfig, points):
    """Per candidate: whether a finger or the palm holds object points, how many object points lie
    between the finger pads, and their extent along the closing axis (the width the fingers close to).

    All boxes are centred on the TCP's x and symmetric in y, so each test is on |x|, |y| and z; a
    point counts as inside a box when more than COLLISION_TOLERANCE_M inside its faces."""
    boxes = gripper_boxes(gripper, 0.0)
    palm, finger = boxes["palm"], boxes["finger_pos"]
    tol = COLLISION_TOLERANCE_M
    palm_half = palm.half - tol
    palm_z = (palm.centre[2] - palm_half[2], palm.centre[2] + palm_half[2])
    finger_x = finger.half[0] - tol
    finger_z = (finger.centre[2] - finger.half[2] + tol, finger.centre[2] + finger.half[2] - tol)
    pad_z = (max(gripper.finger_base_m, gripper.palm_front_m) - gripper.tcp_offset_m, gripper.tip_past_tcp_m)
    collides = np.zeros(len(T), dtype=bool)
    count = np.zeros(len(T), dtype=np.int64)
    span = np.zeros(len(T))
    origin = points.mean(0)  # float32 about the cloud's middle keeps sub-micrometre precision
    local_points = (points - origin).astype(np.float32)
    chunk = max(1, CHUNK_ELEMENTS // max(len(points), 1))
    for start in range(0, len(T), chunk):
        R = T[start : start + chunk, :3, :3].astype(np.float32)
        t = (T[start : start + chunk, :3, 3] - origin).astype(np.float32)
        o = (opening[start : start + chunk] / 2).astype(np.float32)[None]
        # (N, c) TCP-frame coordinates of every point for each candidate, as matrix products.
        x, y, z = (local_points @ R[:, :, k].T - (t * R[:, :, k]).sum(1)[None] for k in range(3))
        x, y = np.abs(x), np.abs(y)
        hit = (x <= palm_half[0]) & (y <= palm_half[1]) & (z >= palm_z[0]) & (z <= palm_z[1])
        in_finger_band = (z >= finger_z[0]) & (z <= finger_z[1])
        hit |= (x <= finger_x) & in_finger_band & (y >= o + tol) & (y <= o + gripper.finger_thickness_m - tol)
        between = (x <= gripper.finger_width_m / 2) & (y < o) & (z >= pad_z[0]) & (z <= pad_z[1])
        collides[start : start + chunk] = hit.any(0)
        count[start : start + chunk] = between.sum(0)
        signed = local_points @ R[:, :, 1].T - (t * R[:, :, 1]).sum(1)[None]
        top = np.where(between, signed, -np.inf).max(0)
        bottom = np.where(between, signed, np.inf).min(0)
        span[start : start + chunk] = np.where(np.isfinite(top), top - bottom, 0.0)
    return collides, count, span
