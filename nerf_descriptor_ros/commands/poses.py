"""`nerf-descriptor poses`: camera poses by structure-from-motion (pycolmap), with or without the arm.

SOURCE is a dataset or a folder of images. By default any arm poses are ignored and the result has
SfM's own frame and scale. --align fits the reconstruction to the dataset's arm poses with a
similarity (metric scale, robot frame) and reports what is left per frame; --refine also refines
the focal length and distortion and reports how far poses and intrinsics moved. Nothing is
written unless --out names a new folder for the resulting dataset (registered frames only).
"""

from __future__ import annotations

from nerf_descriptor_ros.commands.arguments import command_parser


def register(subparsers) -> None:
    p = command_parser(subparsers, "poses", "estimate camera poses with SfM (pycolmap)", __doc__)
    p.add_argument("source", help="dataset folder (transforms.json) or folder of images")
    p.add_argument("--out", help="write the result as a new dataset in this (new) folder")
    p.add_argument(
        "--align", action="store_true", help="align to the dataset's arm poses (metric scale) and report the residual"
    )
    p.add_argument("--refine", action="store_true", help="as --align, and also refine focal length and distortion")
    p.add_argument(
        "--max-exhaustive",
        type=int,
        default=100,
        help="match every image pair up to this many images, else sequential + "
        "power-of-two neighbours (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=-1, help="CPU threads, -1 = all (default)")
    p.set_defaults(func=run)


def run(args) -> int:
    from nerf_descriptor_ros.commands.progress_bars import ProgressBars
    from nerf_descriptor_ros.poses.estimate import estimate_poses

    with ProgressBars() as bars:
        result = estimate_poses(
            args.source,
            out=args.out,
            align=args.align,
            refine=args.refine,
            max_exhaustive=args.max_exhaustive,
            seed=args.seed,
            num_threads=args.threads,
            report=bars.update,
        )
    for line in result.summary_lines():
        print(line)
    return 0
