"""Keypoint matching on new object placements: which matching settings measurably help.

A trained descriptor model and its simulated dataset (with ``ground_truth.json``, as the sim's
capture writes it) are given. Automatic keypoints (the grasp point, two more spread over the
object, and for comparison ``top_centre``, the grasp candidate nearest the middle of the object's
top, which the grasp point was before it was chosen by how well it matches) are defined on the
training views; then the object is put at new random
placements in a ``SimWorld`` (no ROS) and seen from random reachable viewpoints. The ground-truth
pixel of each keypoint follows from its 3D point and the object's rigid motion (occluded ones are
left out). Compared, on the same images:

* plain arg-min vs. soft-argmax refinement (windows 1, 2, 3 descriptor pixels);
* the confidence: how often the keypoints kept above a confidence are within 10 px;
* the not-found threshold: keypoints found on object images vs. "found" on images of the empty
  table (the object moved out of view), for a range of thresholds.

    ./env.sh python benchmarks/keypoint_matching.py --model MODEL_DIR --dataset DATASET --out FILE

Errors are in camera pixels. Writes JSON; prints a summary.

With ``--any-point`` it measures instead the any-point keypoint metric (``keypoints/any_point.py``)
of every ``--model``/``--dataset`` pair given (one per object): keypoints sampled by area over the
object's surface, found in live views of new placements drawn as the demo's live trials draw them;
errors in mm and camera pixels, for each keypoint's own match and for the keypoint moved by the
object pose (the descriptor node's default). JSON key ``any_point``: the view ranges and
``per_object`` (headline: the node's default; both under ``by_source``). ``--symmetry`` declares
each object's symmetry in its model frame, in the order of ``--model`` (``none``, ``z`` for a body
of revolution about its z axis, ``z:N`` for N-fold): the headline scores it, ``strict`` does not.

    ./env.sh python benchmarks/keypoint_matching.py --any-point --model M1 --dataset D1 \
        --model M2 --dataset D2 [--symmetry none --symmetry z] --out FILE

With ``--pose`` (implies ``--any-point``) the same views also score the live object pose
(``live/object_pose.py``) from ``--pose-points`` pose points, sampled as the descriptor node samples
them, against the simulator's true motion of the object: the error of the object's frame in mm and
degrees, within 5 mm and 3 degrees or not, for PnP alone (``pnp``), with the matches' depth
(``depth_matches``) and with ICP against the depth image after that (``depth_matches_icp``, the
node's default; ``_normals_1px``: its normals from adjacent pixels instead of 3 apart); the
first three also with the pose points matched at full size (``_full_size``; the node pools by 2). The
simulator's depth is exact; ``--pose-depth-noise-mm`` adds Gaussian noise to it, as a depth
camera's, for the pose (also the pose that places the any-point keypoints). JSON key
``object_pose`` in each ``per_object`` entry.

    ./env.sh python benchmarks/keypoint_matching.py --pose --model M --dataset D --out FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_json
from nerf_descriptor_ros.descriptors.model import load_model
from nerf_descriptor_ros.keypoints.definition import define_keypoints, moved_point_pixel
from nerf_descriptor_ros.keypoints.grasp_point import auto_grasp_keypoints
from nerf_descriptor_ros.keypoints.matching import (
    KeypointMatchingConfig,
    match_keypoints,
    model_max_distance,
)
from nerf_descriptor_ros.sim.views import PLACEMENTS

REFINEMENTS = (
    ("argmin", "none", 0),
    ("soft_argmax_w1", "soft_argmax", 1),
    ("soft_argmax_w2", "soft_argmax", 2),
    ("soft_argmax_w3", "soft_argmax", 3),
)
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5)
DEFAULT = "soft_argmax_w3"  # the settings the threshold is measured with


def views_of_object(world, rng, count: int, fill_fraction: float = 0.6):
    """Reachable camera views of the object from random azimuths and elevations."""
    from nerf_descriptor_ros.sim import hemisphere_views
    from nerf_descriptor_ros.sim.views import framing_distance

    radius = framing_distance(world.object_radius(), world.intrinsics, fill_fraction)
    views = []
    for _ in range(20 * count):
        if len(views) == count:
            break
        elevation = rng.uniform(35.0, 70.0)
        target = hemisphere_views(
            world.object_center(), 1, radius, elevation, elevation, start_azimuth_deg=rng.uniform(0.0, 360.0)
        )[0]
        solution = world.solve_camera_ik(target)
        if solution.success:
            views.append(solution.joint_positions)
    return views


def summarize(errors: list[float]) -> dict:
    e = np.asarray(errors, dtype=np.float64)
    return {
        "count": int(e.size),
        "median_px": round(float(np.median(e)), 3),
        "mean_px": round(float(e.mean()), 3),
        "within_3px": round(float((e <= 3).mean()), 4),
        "within_10px": round(float((e <= 10).mean()), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="exported descriptor model folder")
    parser.add_argument(
        "--dataset", action="append", required=True, help="its simulated dataset (with ground_truth.json)"
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--placements", type=int, default=10, help="new random object placements")
    parser.add_argument("--views", type=int, default=3, help="camera views per placement")
    parser.add_argument("--seed", type=int, default=1000, help="first placement seed")
    parser.add_argument(
        "--any-point", action="store_true", help="the any-point keypoint metric of every model/dataset pair instead"
    )
    parser.add_argument(
        "--pose", action="store_true", help="--any-point and the live object pose's error on the same views"
    )
    parser.add_argument("--pose-points", type=int, default=200, help="pose points the object pose is found from")
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="new",
        help="with --any-point: new placements (the metric), the capture's placement, or new placements with the "
        "light turned as the object turned (diagnostics: what the move costs, and how much of it is the light)",
    )
    parser.add_argument(
        "--pose-depth-noise-mm", type=float, default=0.0, help="Gaussian noise added to the exact simulated depth"
    )
    parser.add_argument(
        "--symmetry",
        action="append",
        help="with --any-point, one per --model: the object's symmetry in its model frame (none, z, z:N; default none)",
    )
    args = parser.parse_args()
    args.any_point = args.any_point or args.pose
    if len(args.model) != len(args.dataset) or (len(args.model) > 1 and not args.any_point):
        parser.error("give one --dataset per --model (several pairs only with --any-point)")
    args.symmetry = args.symmetry or ["none"] * len(args.model)
    if len(args.symmetry) != len(args.model):
        parser.error("give one --symmetry per --model, or none at all")

    import torch

    from nerf_descriptor_ros.commands.any_point import sim_config_for
    from nerf_descriptor_ros.sim import SimWorld

    torch.set_num_threads(1)
    if args.any_point:
        return any_point(args)
    started = time.monotonic()
    dataset = Dataset.load(args.dataset[0])
    model = load_model(args.model[0])
    truth = json.loads((dataset.root / "ground_truth.json").read_text())["object"]
    T_object_then = np.asarray(truth["T_base_object"])
    keypoints, choice = auto_grasp_keypoints(dataset, model, count=3)
    define_keypoints(model.describe, dataset, [choice.top_centre], keypoints)
    intr = dataset.frames[0].intrinsics
    errors = {label: [] for label, _, _ in REFINEMENTS}
    # With the default settings: (name, distance, confidence, error px) of visible keypoints,
    # distances of hidden ones and of the keypoints in images of the empty table.
    visible, hidden, empty_table = [], [], []
    on_mask = []  # ground-truth pixels that fall on the object's mask
    rng = np.random.default_rng(args.seed)
    sim_config = sim_config_for(truth, intr)
    size = (intr.width, intr.height)
    with SimWorld(sim_config) as world:
        for placement in range(args.placements):
            T_object_now = world.place_object_random(args.seed + placement)
            for joints in views_of_object(world, rng, args.views):
                world.set_joint_positions(joints)
                frame = world.render()
                descriptors = model.describe(frame.rgb)
                truth_uv = {
                    k.name: moved_point_pixel(
                        k.point_base, T_object_then, T_object_now, frame.T_base_cam, world.intrinsics, frame.depth
                    )
                    for k in keypoints
                }
                for label, refinement, window in REFINEMENTS:
                    settings = KeypointMatchingConfig(refinement, max(window, 1))
                    for loc in match_keypoints(descriptors, keypoints, size, config=settings):
                        uv = truth_uv[loc.name]
                        if uv is None:
                            if label == DEFAULT:
                                hidden.append(loc.distance)
                            continue
                        error = float(np.linalg.norm([loc.u, loc.v] - uv))
                        errors[label].append(error)
                        if label == DEFAULT:
                            visible.append((loc.name, loc.distance, loc.confidence, error))
                            on_mask.append(bool(frame.mask[int(round(uv[1])), int(round(uv[0]))]))
                # The same view without the object: what "found" means on an empty table.
                world.set_object_pose(_far_away() @ T_object_now)
                empty = world.render()
                world.set_object_pose(T_object_now)
                empty_table += [loc.distance for loc in match_keypoints(model.describe(empty.rgb), keypoints, size)]
            print(f"placement {placement + 1}/{args.placements}: {len(visible)} visible keypoints so far", flush=True)

    names = np.array([v[0] for v in visible])
    distance, confidence, error = (np.array([v[i] for v in visible], dtype=np.float64) for i in (1, 2, 3))
    hidden, empty_table = np.asarray(hidden), np.asarray(empty_table)
    result = {
        "model": str(Path(args.model[0]).resolve()),
        "dataset": str(dataset.root),
        "keypoints": keypoints.names,
        "grasp_choice": {
            "candidates": choice.candidates,
            "training_views": choice.views,
            "mean_error_px": choice.mean_error_px,
            "top_centre_mean_error_px": choice.top_centre_error_px,
        },
        "placements": args.placements,
        "views_per_placement": args.views,
        "image_size": [intr.width, intr.height],
        "model_input_size": list(model.input_size),
        "ground_truth_pixels_on_object_mask": round(float(np.mean(on_mask)), 4),
        "matching": {label: summarize(errors[label]) for label, _, _ in REFINEMENTS},
        "per_keypoint": {name: summarize(error[names == name]) for name in keypoints.names if (names == name).any()},
        "not_found_threshold": {
            "settings": DEFAULT,
            "model_default": model_max_distance(model.manifest),
            "distance_median": {
                "visible": _median(distance),
                "hidden": _median(hidden),
                "empty_table": _median(empty_table),
            },
            "by_threshold": [_at_threshold(t, distance, error, hidden, empty_table) for t in THRESHOLDS],
        },
        "by_confidence": [
            {
                "min_confidence": round(float(c), 4),
                "kept": round(float((confidence >= c).mean()), 4),
                "kept_within_10px": round(float((error[confidence >= c] <= 10).mean()), 4),
            }
            for c in np.quantile(confidence, [0.0, 0.25, 0.5, 0.75])
        ],
        "seconds": round(time.monotonic() - started, 1),
    }
    atomic_write_json(Path(args.out), result)
    for key, value in result["matching"].items():
        print(
            f"{key:32s} median {value['median_px']:6.2f} px  mean {value['mean_px']:6.2f} px  "
            f"<=3px {value['within_3px']:.3f}  <=10px {value['within_10px']:.3f}  (n={value['count']})"
        )
    for row in result["not_found_threshold"]["by_threshold"] + result["by_confidence"]:
        print(json.dumps(row))
    print(json.dumps(result["per_keypoint"]))
    return 0


def any_point(args) -> int:
    """The any-point section: one entry per object, errors in mm and camera pixels."""
    from nerf_descriptor_ros.commands.any_point import any_point_on_new_placements

    started = time.monotonic()
    per_object = {}
    for model_dir, dataset_dir, symmetry in zip(args.model, args.dataset, args.symmetry):
        began = time.monotonic()
        result = any_point_on_new_placements(
            load_model(model_dir),
            Dataset.load(dataset_dir),
            args.placements,
            args.views,
            args.seed,
            pose_points=args.pose_points if args.pose else 0,
            depth_noise_m=args.pose_depth_noise_mm / 1000.0,
            placement=args.placement,
            model_dir=model_dir,
            symmetry=symmetry,
        )
        result.update(model=str(Path(model_dir).resolve()), dataset=str(Path(dataset_dir).resolve()))
        result["seconds"] = round(time.monotonic() - began, 1)
        name = result["object"] if result["object"] not in per_object else f"{result['object']}#{len(per_object)}"
        per_object[name] = result
        scored = {"": result["by_source"], **({"strict ": result["strict"]} if "strict" in result else {})}
        for label, summaries in scored.items():
            for source, summary in summaries.items():
                print(
                    f"{name:24s} {label}{source:6s} within 10 mm {summary['within_10mm']}  median "
                    f"{summary['median_mm']} mm ({summary['median_px']} px)  found {summary['found_rate']}  "
                    f"visible {summary['visible']} of {summary['pairs']} (keypoint, view) pairs",
                    flush=True,
                )
        for method, pose in ((k, v) for k, v in result.get("object_pose", {}).items() if isinstance(v, dict)):
            if "trials" in pose:
                print(
                    f"{name:24s} object pose {method:28s} within 5 mm and 3 deg {pose['within_tolerance']}  "
                    f"median {pose['median_mm']} mm {pose['median_deg']} deg  refused {pose['refused']} "
                    f"of {pose['trials']}",
                    flush=True,
                )
    within = [r["within_10mm"] for r in per_object.values() if r["within_10mm"] is not None]
    within_by_match = [r["by_source"]["match"]["within_10mm"] for r in per_object.values()]
    within_by_match = [w for w in within_by_match if w is not None]
    result = {
        "any_point": {
            "view_ranges": next(iter(per_object.values()))["view_ranges"],
            "symmetry": {name: r["symmetry"] for name, r in per_object.items()},
            "keypoint_source": next(iter(per_object.values()))["keypoint_source"],
            "mean_within_10mm": round(float(np.mean(within)), 4) if within else None,
            "mean_within_10mm_by_match": round(float(np.mean(within_by_match)), 4) if within_by_match else None,
            "per_object": per_object,
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    atomic_write_json(Path(args.out), result)
    return 0


def _median(values: np.ndarray):
    return round(float(np.median(values)), 4) if len(values) else None


def _at_threshold(
    threshold: float, distance: np.ndarray, error: np.ndarray, hidden: np.ndarray, empty: np.ndarray
) -> dict:
    """How often keypoints count as found at ``threshold``, and how right the found ones are."""
    found = error[distance <= threshold]
    rate = lambda d: round(float((d <= threshold).mean()), 4) if len(d) else None  # noqa: E731
    return {
        "threshold": threshold,
        "found_when_visible": rate(distance),
        "found_within_10px": round(float((found <= 10).mean()), 4) if len(found) else None,
        "found_when_hidden": rate(hidden),
        "found_on_empty_table": rate(empty),
    }


def _far_away() -> np.ndarray:
    """An offset that puts the object 5 m below its placement, out of every view."""
    T = np.eye(4)
    T[2, 3] = -5.0
    return T


if __name__ == "__main__":
    sys.exit(main())
