"""The manipulation node's grasp planners on new placements of an object, with ground-truth keypoints.

No ROS and no descriptors: a ``SimWorld`` (the demo's CPU image size) puts the object at random
placements (seeds ``--first-seed`` ...), the camera looks at it from a random reachable live view
(as the demo's trials draw them), and the keypoint is the object's top centre (the highest point
above its bounding box's middle, which the automatic grasp point is near), lifted from the depth
at its pixel as the descriptor node lifts a match. Each planner then makes a grasp from that one
view, as the node does, and the world picks and lifts there (``SimWorld.pick_and_lift``, the sim
node's default pre-grasp distance and lift height). Planners:

* ``surface``: ``planner.plan_grasp`` (the node's ``grasp_planner: surface``);
* ``antipodal``: ``depth_grasps.antipodal_grasps_from_depth``, the best candidate, falling back
  to ``surface`` where none fits (the node's ``grasp_planner: antipodal``);
* ``antipodal_fused`` (not a node option; what fusing views would give the sampler): the same
  surface extraction from the live view and ``--fused-views`` more views around the object, put
  together, then the sampler; no fallback, a trial without a grasp is a failure.

With ``--attempts`` > 1, a failed pick is retried as the node's ``max_grasp_attempts`` does: the
keypoint is looked for again from where the pick left the camera (in view and not hidden, else
no retry) and the planner plans anew. Writes JSON (per trial and totals); prints a summary.

    ./env.sh python benchmarks/grasp_planners.py --placements 10 --attempts 2 --out FILE
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from nerf_descriptor_ros.data.dataset import atomic_write_json
from nerf_descriptor_ros.geometry import invert, transform_points
from nerf_descriptor_ros.grasping.antipodal import AntipodalConfig, sample_antipodal_grasps
from nerf_descriptor_ros.grasping.depth_grasps import DepthSurfaceConfig, antipodal_grasps_from_depth, depth_surface
from nerf_descriptor_ros.grasping.gripper import GripperConfig
from nerf_descriptor_ros.grasping.planner import GraspConfig, GraspError, plan_grasp
from nerf_descriptor_ros.sim import SimConfig, SimWorld
from nerf_descriptor_ros.sim.views import hemisphere_views, random_live_view, sweep_distance

PLANNERS = ("surface", "antipodal", "antipodal_fused")
PRE_GRASP_M = LIFT_M = 0.1  # the sim node's defaults (pick_pre_grasp_distance_m, pick_lift_height_m)
VIEW_ATTEMPTS = 12  # as the demo's trials
VISIBLE_TOLERANCE_M = 0.005  # the keypoint is not seen where the depth at its pixel differs by more


def top_centre(world: SimWorld) -> np.ndarray:
    """The object's point hit by a ray straight down at its bounding box's middle, or where that
    misses it (between a duck's head and tail), at the nearest spot within 3 cm that it does not."""
    low, high = world.object_bounds()
    centre = (low + high) / 2
    for radius in np.arange(0.0, 0.031, 0.002):
        for angle in np.linspace(0.0, 2 * np.pi, max(1, int(radius / 0.002) * 6), endpoint=False):
            x, y = centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)
            hit = world.bullet.rayTest([x, y, high[2] + 0.1], [x, y, -0.01])[0]
            if hit[0] == world.object_id:
                return np.array(hit[3])
    raise RuntimeError("no ray from above hits the object within 3 cm of its middle")


def sight(world: SimWorld, frame, point_base: np.ndarray):
    """The keypoint as a perfect matcher reports it in ``frame``: (point_cam from the depth, uv), or None."""
    intr = world.intrinsics
    cam = transform_points(invert(frame.T_base_cam), point_base[None])
    uv, z = intr.project(cam)
    col, row = int(round(uv[0, 0])), int(round(uv[0, 1]))
    if not (z[0] > 0 and 0 <= col < intr.width and 0 <= row < intr.height):
        return None
    d = float(frame.depth[row, col])
    if not np.isfinite(d) or abs(d - z[0]) > VISIBLE_TOLERANCE_M:  # hidden, or its pixel shows what is behind
        return None
    return intr.backproject(uv, np.array([d]))[0], (float(uv[0, 0]), float(uv[0, 1]))


def plan(name: str, world: SimWorld, frame, seen, point_base, extra_frames, configs) -> tuple[np.ndarray | None, str]:
    """(T_base_tcp or None, how it was made)."""
    surface, antipodal, gripper, grasp = configs
    point_cam, uv = seen
    intr = world.intrinsics
    if name == "surface":
        return plan_grasp(point_cam, frame.T_base_cam, grasp, uv, frame.depth, intr).T_base_tcp, "surface"
    if name == "antipodal":
        try:
            grasps = antipodal_grasps_from_depth(
                point_cam, frame.T_base_cam, uv, frame.depth, intr, surface, gripper, antipodal
            )
            return grasps.T_base_tcp[0], f"antipodal ({grasps.summary()})"
        except GraspError as exc:
            T = plan_grasp(point_cam, frame.T_base_cam, grasp, uv, frame.depth, intr).T_base_tcp
            return T, f"surface fallback ({exc})"
    clouds = []
    for f in [frame, *extra_frames]:
        cam = transform_points(invert(f.T_base_cam), point_base[None])[0]
        f_uv = intr.project(cam[None])[0][0]
        try:
            clouds.append(depth_surface(cam, f.T_base_cam, tuple(f_uv), f.depth, intr, surface))
        except GraspError:
            continue
    if not clouds:
        return None, "no surface"
    points, normals = (np.concatenate(parts) for parts in zip(*clouds))
    try:
        grasps = sample_antipodal_grasps(points, normals, point_base, gripper, antipodal, surface.table_z_m)
    except GraspError as exc:
        return None, f"none ({exc})"
    return grasps.T_base_tcp[0], f"antipodal on {len(clouds)} views ({grasps.summary()})"


def reachable_view(world: SimWorld, centre, radius, rng, point_base):
    """Joints and frame of a random live view that sees the keypoint, or None."""
    for _ in range(VIEW_ATTEMPTS):
        solution = world.solve_camera_ik(random_live_view(centre, radius, rng))
        if not solution.success:
            continue
        world.set_joint_positions(solution.joint_positions)
        frame = world.render()
        seen = sight(world, frame, point_base)
        if seen is not None:
            return solution.joint_positions, frame, seen
    return None


def fused_frames(world: SimWorld, centre, radius, count: int) -> list:
    frames = []
    for view in hemisphere_views(centre, max(count, 1), radius, 45.0, 45.0, start_azimuth_deg=0.0)[:count]:
        solution = world.solve_camera_ik(view)
        if solution.success:
            world.set_joint_positions(solution.joint_positions)
            frames.append(world.render())
    return frames


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--object", default="duck_vhacd.urdf")
    parser.add_argument("--placements", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=1000, help="placement seed of the first trial (the demo's)")
    parser.add_argument("--attempts", type=int, default=1, help="picks per trial, as max_grasp_attempts")
    parser.add_argument("--planners", nargs="+", default=list(PLANNERS), choices=PLANNERS)
    parser.add_argument("--fused-views", type=int, default=4, help="antipodal_fused: views besides the live one")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args(argv)
    configs = (DepthSurfaceConfig(), AntipodalConfig(), GripperConfig(), GraspConfig())
    started = time.monotonic()
    trials = []
    with SimWorld(SimConfig(object_source=args.object, width=args.width, height=args.height)) as world:
        for seed in range(args.first_seed, args.first_seed + args.placements):
            world.place_object_random(seed)
            point_base = top_centre(world)
            centre = world.object_center()
            radius = sweep_distance(world.object_radius(), world.intrinsics)
            record = {"seed": seed, "keypoint": np.round(point_base, 4).tolist()}
            view = reachable_view(world, centre, radius, np.random.default_rng(seed), point_base)
            if view is None:
                record["note"] = "no reachable view sees the keypoint"
                trials.append(record)
                continue
            joints, first_frame, first_seen = view
            extra = fused_frames(world, centre, radius, args.fused_views) if "antipodal_fused" in args.planners else []
            for name in args.planners:
                world.set_joint_positions(joints)
                frame, seen, attempts = first_frame, first_seen, []
                for _ in range(args.attempts):
                    T, how = plan(name, world, frame, seen, point_base, extra, configs)
                    if T is None:
                        attempts.append({"planned": how, "success": False, "message": "no grasp"})
                        break
                    result = world.pick_and_lift(T, PRE_GRASP_M, LIFT_M)
                    attempts.append({"planned": how, "success": result.success, "message": result.message})
                    if result.success:
                        break
                    frame = world.render()  # where the pick left the camera
                    seen = sight(world, frame, point_base)
                    if seen is None:
                        attempts.append({"planned": "keypoint not in view after the pick: no retry", "success": False})
                        break
                record[name] = {"success": any(a["success"] for a in attempts), "attempts": attempts}
            trials.append(record)
            line = ", ".join(
                f"{n} {'lifted' if record[n]['success'] else 'failed'}" for n in args.planners if n in record
            )
            print(f"[grasp_planners] seed {seed}: {line or record.get('note')}", flush=True)
    totals = {}
    for name in args.planners:
        done = [t[name] for t in trials if name in t]
        totals[name] = {
            "lifted": sum(d["success"] for d in done),
            "lifted_first_attempt": sum(bool(d["attempts"]) and d["attempts"][0]["success"] for d in done),
            "trials": len(trials),
            "antipodal_used": sum(d["attempts"][0]["planned"].startswith("antipodal") for d in done),
        }
    report = {
        "object": args.object,
        "image": [args.width, args.height],
        "attempts": args.attempts,
        "seeds": [args.first_seed, args.first_seed + args.placements - 1],
        "totals": totals,
        "trials": trials,
        "seconds": round(time.monotonic() - started, 1),
    }
    atomic_write_json(Path(args.out), report)
    for name, t in totals.items():
        print(
            f"[grasp_planners] {name}: lifted {t['lifted']}/{t['trials']} ({t['lifted_first_attempt']} at the first "
            f"attempt); antipodal grasp made at the first attempt in {t['antipodal_used']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
