"""Geometry from the NeRF: the exported mesh against the object's true surface.

For each object (the duck of pybullet_data and a procedurally generated thin object, a fork) the
simulated Panda sweeps its eye-in-hand camera over a hemisphere cap (``sim.sweep_dataset``, no
ROS), a NeRF is trained on the capture under a time budget (as ``benchmarks/descriptor_quality.py``
trains it), and its surface is exported by TSDF fusion with the package's defaults
(``nerf.surface_export``, what ``nerf-descriptor export mesh`` writes). The ground truth is the
URDF's visual mesh at URDF scale, placed at the object's pose in the world
(``ground_truth.json``); no alignment (no ICP) is done.

Measured, with ``--samples`` points sampled uniformly by area on each surface:

* symmetric Chamfer distance: the mean of the two mean nearest-neighbour distances
  (exported -> truth, "accuracy", and truth -> exported, "completeness"), in mm;
* F-score at 2 mm: harmonic mean of the fractions of points within 2 mm of the other side.

The truth includes faces no camera sees (the underside resting on the table, insides of the
fork's joints): they count against completeness, as the protocol asks. The same figures against
the truth's camera-visible part only are written too (``visible_only``; the exported points are
all kept, so there its accuracy also counts what the export has where the truth is unseen), to
tell what the capture cannot see from what the NeRF gets wrong.

    ./env.sh python benchmarks/nerf_geometry.py --out FILE [--work-dir DIR] [--nerf-seconds S]

Captures and NeRFs in ``--work-dir`` are reused (a finished NeRF of the same capture and settings
is up to date). Timings on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open3d as o3d
from scipy.spatial import cKDTree

from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_json
from nerf_descriptor_ros.device import resolve_device
from nerf_descriptor_ros.geometry import transform_points
from nerf_descriptor_ros.nerf import load_nerf
from nerf_descriptor_ros.nerf.surface_export import SurfaceSettings, extract_surface, write_ply
from nerf_descriptor_ros.sim.objects import ObjectModel, ObjectModelError, model_visual_mesh

OBJECTS = ["duck=duck_vhacd.urdf", "fork=thin:fork:0"]
# The targets: Chamfer distance (mm) on the duck and on a thin object.
TARGETS_MM = {"duck": 3.0, "thin": 2.0}
F_SCORE_THRESHOLD_MM = 2.0
MIN_SAMPLES = 10_000


def capture(spec: str, work: Path, width: int, height: int, views: int) -> tuple[str, Dataset, bool]:
    """(name, dataset, thin?) for ``NAME=SOURCE``; SOURCE is a URDF (pybullet_data) or thin:KIND:SEED."""
    name, _, source = spec.partition("=")
    dataset_dir = work / name / "dataset"
    thin = source.startswith("thin:")
    if (dataset_dir / "transforms.json").is_file():
        return name, Dataset.load(dataset_dir), thin
    from nerf_descriptor_ros.sim import SimConfig
    from nerf_descriptor_ros.sim.sweep_dataset import capture_sweep_dataset
    from nerf_descriptor_ros.sim.thin_objects import write_thin_object

    if thin:
        _, kind, seed = source.split(":")
        source = str(write_thin_object(work / "objects", kind, int(seed)))
    config = SimConfig(object_source=source, width=width, height=height)
    return name, capture_sweep_dataset(config, dataset_dir, views), thin


def visual_mesh(truth: dict) -> o3d.geometry.TriangleMesh:
    """The URDF's (or mesh file's) visual geometry at its scale, at ``T_base_object`` in the world."""
    model = ObjectModel(truth["source"], Path(truth["model_path"]), truth["model_kind"], float(truth["scale"]))
    try:
        vertices, triangles = model_visual_mesh(model)
    except ObjectModelError as exc:
        raise SystemExit(f"the object's visual mesh is not measured: {exc}") from exc
    world = transform_points(np.asarray(truth["T_base_object"]), vertices)
    return o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(world), o3d.utility.Vector3iVector(triangles))


def area_samples(mesh: o3d.geometry.TriangleMesh, count: int, seed: int) -> np.ndarray:
    """``count`` points uniformly distributed by area over the mesh's triangles."""
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = np.linalg.norm(np.cross(b - a, c - a), axis=1) / 2
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=count, p=area / area.sum())
    r1, r2 = rng.random(count), rng.random(count)
    s = np.sqrt(r1)
    return (1 - s)[:, None] * a[tri] + (s * (1 - r2))[:, None] * b[tri] + (s * r2)[:, None] * c[tri]


def visible(points: np.ndarray, mesh: o3d.geometry.TriangleMesh, dataset: Dataset, tolerance: float) -> np.ndarray:
    """Which points of the truth some capture camera sees (the table plane z = 0 hides what is below it)."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.asarray(mesh.vertices), o3d.core.float32),
        o3d.core.Tensor(np.asarray(mesh.triangles), o3d.core.uint32),
    )
    seen = np.zeros(len(points), dtype=bool)
    for frame in dataset.frames:
        eye = frame.c2w[:3, 3]
        offset = points - eye
        distance = np.linalg.norm(offset, axis=1)
        rays = np.concatenate([np.broadcast_to(eye, points.shape), offset / distance[:, None]], 1)
        hit = scene.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))["t_hit"].numpy()
        cam = (points - eye) @ frame.c2w[:3, :3]
        uv, z = frame.intrinsics.project(cam)
        in_view = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < frame.intrinsics.width)
        in_view &= (uv[:, 1] >= 0) & (uv[:, 1] < frame.intrinsics.height)
        seen |= in_view & (hit >= distance - tolerance) & (points[:, 2] > tolerance)
    return seen


def distances(points_a: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    return cKDTree(points_b).query(points_a, workers=1)[0]


def compare(pred: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """Chamfer (mean of both directions' mean distance) and F-score at ``threshold``, in mm."""
    to_truth, to_pred = distances(pred, truth), distances(truth, pred)
    precision, recall = float((to_truth <= threshold).mean()), float((to_pred <= threshold).mean())
    f_score = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "chamfer_mm": round(1000 * float(to_truth.mean() + to_pred.mean()) / 2, 3),
        "accuracy_mm": round(1000 * float(to_truth.mean()), 3),
        "completeness_mm": round(1000 * float(to_pred.mean()), 3),
        "accuracy_median_mm": round(1000 * float(np.median(to_truth)), 3),
        "completeness_median_mm": round(1000 * float(np.median(to_pred)), 3),
        f"precision_{threshold * 1000:g}mm": round(precision, 4),
        f"recall_{threshold * 1000:g}mm": round(recall, 4),
        f"f_score_{threshold * 1000:g}mm": round(f_score, 4),
    }


def _print_every(step: int):
    def report(r):
        if r.iteration % step == 0 or r.iteration == r.total_iterations:
            print(f"  surface: {r.iteration}/{r.total_iterations} views fused", flush=True)

    return report


def measure(spec: str, work: Path, args, settings: SurfaceSettings) -> dict:
    from descriptor_quality import train_object_nerf

    timings = {}
    started = time.monotonic()
    print(f"[{spec}] capture", flush=True)
    name, dataset, thin = capture(spec, work, args.width, args.height, args.views)
    timings["capture_s"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    print(f"[{name}] NeRF ({args.nerf_seconds:.0f} s budget)", flush=True)
    checkpoint = train_object_nerf(dataset, work / name / "nerf", args.nerf_seconds, args.device)
    timings["nerf_s"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    model = load_nerf(checkpoint, dataset, device=resolve_device(args.device))
    surface = extract_surface(model, dataset, settings, report=_print_every(10))
    mesh = surface.mesh()
    out = work / name / f"mesh_{time.strftime('%Y%m%d-%H%M%S')}.ply"
    write_ply(out, mesh)
    timings["export_s"] = round(time.monotonic() - started, 1)
    truth_record = json.loads((dataset.root / "ground_truth.json").read_text())["object"]
    truth_mesh = visual_mesh(truth_record)
    pred_points = area_samples(mesh, args.samples, seed=1)
    truth_points = area_samples(truth_mesh, args.samples, seed=2)
    threshold = F_SCORE_THRESHOLD_MM / 1000
    figures = compare(pred_points, truth_points, threshold)
    seen = visible(truth_points, truth_mesh, dataset, tolerance=surface.voxel_size)
    target = TARGETS_MM["thin" if thin else "duck"]
    metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
    return {
        "object": name,
        "source": truth_record["source"],
        "thin": thin,
        **figures,
        "target_chamfer_mm": target,
        "passed": figures["chamfer_mm"] <= target,
        "visible_only": {
            "truth_fraction_visible": round(float(seen.mean()), 4),
            **compare(pred_points, truth_points[seen], threshold),
        },
        "mesh": {
            "path": str(out),
            "vertices": len(mesh.vertices),
            "triangles": len(mesh.triangles),
            "area_m2": round(float(mesh.get_surface_area()), 6),
            "truth_area_m2": round(float(truth_mesh.get_surface_area()), 6),
            "voxel_size_mm": round(1000 * surface.voxel_size, 4),
            "fused_views": surface.views,
            "fused_pixels": surface.fused_pixels,
        },
        "nerf": {
            k: metrics.get(k)
            for k in ("psnr", "psnr_object_pixels", "depth_median_abs_err_m", "iterations", "train_seconds", "device")
        },
        "timings": timings,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--work-dir", help="captures, NeRFs and meshes (default: a new temporary folder)")
    parser.add_argument("--objects", nargs="+", default=OBJECTS, help="NAME=URDF or NAME=thin:KIND:SEED")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--nerf-seconds", type=float, default=240.0, help="NeRF training time per object")
    parser.add_argument("--samples", type=int, default=100_000, help=f"points per surface (at least {MIN_SAMPLES})")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.samples < MIN_SAMPLES:
        parser.error(f"--samples must be at least {MIN_SAMPLES}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # descriptor_quality's NeRF training
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="nerf_geometry_"))
    settings = SurfaceSettings()
    started = time.monotonic()
    results = [measure(spec, work, args, settings) for spec in args.objects]
    for r in results:
        print(
            f"[{r['object']}] Chamfer {r['chamfer_mm']:.2f} mm (accuracy {r['accuracy_mm']:.2f}, completeness "
            f"{r['completeness_mm']:.2f}), F@2mm {r['f_score_2mm']:.3f}; visible part only: Chamfer "
            f"{r['visible_only']['chamfer_mm']:.2f} mm, F@2mm {r['visible_only']['f_score_2mm']:.3f}; target "
            f"{r['target_chamfer_mm']} mm: {'pass' if r['passed'] else 'FAIL'}",
            flush=True,
        )
    report = {
        "benchmark": "nerf_geometry",
        "settings": {
            "objects": args.objects,
            "capture": {"width": args.width, "height": args.height, "views": args.views},
            "nerf_seconds": args.nerf_seconds,
            "device": args.device,
            "surface": vars(settings),
            "samples_per_surface": args.samples,
            "f_score_threshold_mm": F_SCORE_THRESHOLD_MM,
            "alignment": "none (world frame of the capture)",
        },
        "targets_chamfer_mm": TARGETS_MM,
        "per_object": results,
        "passed": all(r["passed"] for r in results),
        "total_seconds": round(time.monotonic() - started, 1),
        "work_dir": str(work),
    }
    atomic_write_json(Path(args.out), report)
    print(f"written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
