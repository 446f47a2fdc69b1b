"""`nerf-descriptor import` / `export`: datasets in the pose formats other pipelines use.

import FORMAT SRC DEST   writes a new dataset DEST from
    llff        poses_bounds.npy + images/ (--images images_4 for a downsampled folder)
    nerfstudio  transforms.json of nerfstudio or instant-ngp, or a Blender synthetic folder
                (transforms_train/val/test.json, RGBA composited over --background)
    colmap      a COLMAP sparse model folder or project (sparse/0 + images/; --images DIR)
    masks       SRC = a folder of object masks (any segmentation tool; same names as the
                images), DEST = an existing dataset without masks: the one import that changes
                a dataset, by adding masks/ and naming them in its manifest
  A masks/ folder next to the source images comes along; masks are checked against the poses.

export FORMAT DATASET DEST   writes DEST (a new folder) as
    llff        poses_bounds.npy + images/ (+ masks/); bounds from the dataset, its depth or --bounds
    nerfstudio  a plain nerfstudio transforms.json + files
    colmap      images/ + sparse/0 (cameras and poses, no points: for point_triangulator)
  export mesh|pointcloud DATASET OUT.ply writes the surface of the dataset's NeRF instead
  (commands/export.py; its options are listed below)
"""

from __future__ import annotations

from nerf_descriptor_ros.commands.arguments import command_parser
from nerf_descriptor_ros.commands.export import SURFACE_FORMATS, SURFACE_OPTIONS, add_surface_options

_DESCRIPTION = __doc__


def register(subparsers) -> None:
    imp = command_parser(
        subparsers, "import", "import LLFF, nerfstudio/instant-ngp/Blender, COLMAP or masks", _DESCRIPTION
    )
    imp.add_argument("format", choices=["llff", "nerfstudio", "colmap", "masks"])
    imp.add_argument("src")
    imp.add_argument("dest")
    imp.add_argument("--images", help="llff: image subfolder (default images); colmap: image folder")
    imp.add_argument(
        "--background", choices=["white", "black"], help="nerfstudio: background for transparent images (default white)"
    )
    imp.set_defaults(func=run_import, parser=imp)

    exp = command_parser(
        subparsers, "export", "export a dataset to LLFF, nerfstudio or COLMAP, or its NeRF's surface", _DESCRIPTION
    )
    exp.add_argument("format", choices=["llff", "nerfstudio", "colmap", *SURFACE_FORMATS])
    exp.add_argument("dataset")
    exp.add_argument("dest")
    exp.add_argument(
        "--bounds",
        nargs=2,
        type=float,
        metavar=("NEAR", "FAR"),
        help="llff: near/far for every image when the dataset has no depth or bounds",
    )
    exp.add_argument(
        "--max-pixel-shift",
        type=float,
        help="llff: accept a camera LLFF cannot hold exactly if no pixel moves more than this (default 0.5)",
    )
    add_surface_options(exp)
    exp.set_defaults(func=run_export, parser=exp)


def _refuse_foreign_options(args, allowed: dict[str, tuple[str, ...]]) -> dict:
    """Options given for the chosen format as keyword arguments; an option for another one is an error."""
    kwargs = {}
    for option, formats in allowed.items():
        value = getattr(args, option)
        if value is None:
            continue
        if args.format not in formats:
            args.parser.error(f"--{option.replace('_', '-')} applies to {', '.join(formats)} only")
        kwargs[option] = tuple(value) if isinstance(value, list) else value
    return kwargs


def run_import(args) -> int:
    from nerf_descriptor_ros.commands.progress_bars import ProgressBars
    from nerf_descriptor_ros.data.colmap import import_colmap
    from nerf_descriptor_ros.data.dataset import DatasetError
    from nerf_descriptor_ros.data.llff import import_llff
    from nerf_descriptor_ros.data.masks import attach_masks, check_mask_consistency
    from nerf_descriptor_ros.data.nerfstudio_format import import_transforms

    importers = {"llff": import_llff, "nerfstudio": import_transforms, "colmap": import_colmap}

    kwargs = _refuse_foreign_options(args, {"images": ("llff", "colmap"), "background": ("nerfstudio",)})
    with ProgressBars() as bars:
        if args.format == "masks":
            dataset = attach_masks(args.dest, args.src, report=bars.update)
        else:
            dataset = importers[args.format](args.src, args.dest, report=bars.update, **kwargs)
    print(f"{len(dataset)} frames in {dataset.root}")
    if dataset.has_masks and len(dataset) >= 3:
        try:
            print(check_mask_consistency(dataset).summary())
        except DatasetError as exc:  # the import itself succeeded
            print(f"warning: {exc}")
    return 0


def run_export(args) -> int:
    from nerf_descriptor_ros.commands.progress_bars import ProgressBars
    from nerf_descriptor_ros.data.colmap import export_colmap
    from nerf_descriptor_ros.data.llff import export_llff
    from nerf_descriptor_ros.data.nerfstudio_format import export_nerfstudio

    exporters = {"llff": export_llff, "nerfstudio": export_nerfstudio, "colmap": export_colmap}

    surface_options = {option: SURFACE_FORMATS for option in SURFACE_OPTIONS}
    kwargs = _refuse_foreign_options(args, {"bounds": ("llff",), "max_pixel_shift": ("llff",), **surface_options})
    if args.format in SURFACE_FORMATS:
        from nerf_descriptor_ros.commands.export import run_surface_export

        return run_surface_export(args)
    with ProgressBars() as bars:
        dest = exporters[args.format](args.dataset, args.dest, report=bars.update, **kwargs)
    print(f"wrote {args.format} to {dest}")
    return 0
