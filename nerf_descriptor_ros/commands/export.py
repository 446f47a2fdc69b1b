"""`nerf-descriptor export mesh|pointcloud DATASET OUT.ply`: the object's surface from its NeRF.

The trained NeRF (default DATASET/nerf/nerf.pt, where train-nerf and the trainer node write it)
renders depth and colour from the capture's training cameras, and, for a NeRF trained with
object masks, from as many views again on a sphere around the object; pixels where the NeRF is
opaque (and on the object's mask) are fused into a TSDF volume. ``mesh`` writes its triangle
mesh, ``pointcloud`` its surface points, as binary PLY with colours and normals, in the
dataset's world frame (the robot base, metres). The voxel size follows the object (its occupied
region's diagonal / 256) unless --voxel-size is given. OUT.ply must not exist yet (--overwrite
replaces it).

Registered as formats of `nerf-descriptor export` (commands/convert.py).
"""

from __future__ import annotations

from pathlib import Path

SURFACE_FORMATS = ("mesh", "pointcloud")
# Options of the surface formats only (the dataset formats refuse them), as argparse dests.
SURFACE_OPTIONS = ("nerf", "voxel_size", "render_scale", "min_opacity", "sphere_views", "depth", "device", "overwrite")


def add_surface_options(parser) -> None:
    """The options of ``export mesh|pointcloud``; all default to None so that other formats can
    tell they were not given."""
    group = parser.add_argument_group("mesh and pointcloud (the surface of the dataset's NeRF)")
    group.add_argument("--nerf", metavar="CHECKPOINT", help="NeRF checkpoint (default: DATASET/nerf/nerf.pt)")
    group.add_argument(
        "--voxel-size",
        type=float,
        metavar="METRES",
        help="TSDF voxel edge (default: the NeRF's occupied region's diagonal / 256)",
    )
    group.add_argument(
        "--render-scale",
        type=float,
        help="render the views at this fraction of the dataset's image size (default 1)",
    )
    group.add_argument("--min-opacity", type=float, help="fuse only rays at least this opaque (default 0.9)")
    group.add_argument(
        "--sphere-views",
        type=int,
        help="extra views on a sphere around the object (default: as many as the training views for "
        "a NeRF trained with masks, else 0)",
    )
    group.add_argument("--depth", choices=["median", "expected"], help="depth of each ray (default median)")
    group.add_argument("--device", help="auto (CUDA when available, the default), cpu, cuda or cuda:N")
    group.add_argument("--overwrite", action="store_true", default=None, help="replace OUT.ply if it exists")


def run_surface_export(args) -> int:
    from nerf_descriptor_ros.commands.progress_bars import ProgressBars
    from nerf_descriptor_ros.data.dataset import Dataset
    from nerf_descriptor_ros.device import resolve_device
    from nerf_descriptor_ros.nerf import load_nerf
    from nerf_descriptor_ros.nerf.surface_export import (
        SurfaceExportError,
        SurfaceSettings,
        extract_surface,
        write_ply,
    )

    out = Path(args.dest)
    if out.suffix.lower() != ".ply":
        raise SurfaceExportError(f"{out}: the surface is written as PLY; name the file *.ply")
    if out.exists() and not args.overwrite:
        raise SurfaceExportError(f"{out} already exists: choose a new name (or pass --overwrite)")
    given = {
        "voxel_size": args.voxel_size,
        "render_scale": args.render_scale,
        "min_opacity": args.min_opacity,
        "sphere_views": args.sphere_views,
        "depth": args.depth,
    }
    settings = SurfaceSettings(**{k: v for k, v in given.items() if v is not None})
    device = resolve_device(args.device or "auto")
    dataset = Dataset.load(args.dataset)
    checkpoint = Path(args.nerf) if args.nerf else dataset.root / "nerf" / "nerf.pt"
    model = load_nerf(checkpoint, dataset, device=device)
    with ProgressBars() as bars:
        surface = extract_surface(model, dataset, settings, device=device, report=bars.update)
    geometry = surface.mesh() if args.format == "mesh" else surface.point_cloud()
    write_ply(out, geometry, overwrite=bool(args.overwrite))
    if args.format == "mesh":
        size = f"{len(geometry.vertices)} vertices, {len(geometry.triangles)} triangles"
    else:
        size = f"{len(geometry.points)} points"
    print(
        f"wrote {args.format} {out} ({size}; voxel {surface.voxel_size * 1000:.3g} mm, "
        f"{surface.views} views fused, world frame of {dataset.root}, metres)"
    )
    return 0
