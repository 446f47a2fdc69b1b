"""SfM with pycolmap on ray-cast views of a textured scene, similarity alignment, mask/pose checks.

The scene (a textured box on a textured plane) is ray-cast in numpy with our pinhole model, so the
true cameras are known exactly; views are small (240x180) and few to keep the suite fast.
"""

import threading

import cv2
import numpy as np
import pytest

from nerf_descriptor_ros.data.dataset import Dataset, DatasetWriter
from nerf_descriptor_ros.data.masks import check_mask_consistency
from nerf_descriptor_ros.geometry import CameraIntrinsics, look_at, pose_distance, pose_to_matrix
from nerf_descriptor_ros.poses.alignment import (
    AlignmentError,
    Similarity,
    align_poses,
    perturb_pose,
    robust_umeyama,
    umeyama,
)
from nerf_descriptor_ros.poses.estimate import estimate_poses
from nerf_descriptor_ros.poses.sfm import SfmError, run_sfm
from nerf_descriptor_ros.progress import StageCancelled

INTR = CameraIntrinsics.from_fov(240, 180, 45)
BOX = (np.array([-0.05, -0.04, 0.0]), np.array([0.05, 0.04, 0.09]))
PLANE_EXTENT = 0.3  # the plane texture repeats every 2 * PLANE_EXTENT metres


def _texture(seed, size):
    rng = np.random.default_rng(seed)
    tex = sum(
        cv2.resize(rng.random((size // s, size // s, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
        for s in (4, 8, 16, 32, 64)
    )
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return (255 * tex).astype(np.uint8)


TEXTURES = (_texture(1, 512), _texture(2, 384))


def render(c2w, intr=INTR, textured=True):
    """RGB, object mask and depth of the scene seen by an OpenCV-axes camera ``c2w``."""
    u, v = np.meshgrid(np.arange(intr.width), np.arange(intr.height))
    rays = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones(u.shape)], -1).reshape(-1, 3)
    d, o = rays @ c2w[:3, :3].T, c2w[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_plane = np.where(-o[2] / d[:, 2] > 0, -o[2] / d[:, 2], np.inf)
        t1, t2 = (BOX[0] - o) / d, (BOX[1] - o) / d
    t_near, t_far = np.nanmax(np.minimum(t1, t2), 1), np.nanmin(np.maximum(t1, t2), 1)
    t_box = np.where((t_far >= t_near) & (t_near > 0), t_near, np.inf)
    on_box = t_box < t_plane
    t = np.minimum(t_box, t_plane)
    p = o + d * t[:, None]
    rgb = np.full((len(d), 3), 128, np.uint8)
    if textured:
        plane = np.isfinite(t) & ~on_box
        n = TEXTURES[0].shape[0]
        uv = (np.mod(p[plane, :2] / PLANE_EXTENT * 0.5 + 0.5, 1.0) * (n - 1)).astype(int)
        rgb[plane] = TEXTURES[0][uv[:, 1], uv[:, 0]]
        q = (p[on_box] - BOX[0]) / (BOX[1] - BOX[0])
        face_axis = np.argmin(np.minimum(q, 1 - q), 1)
        a = np.where(face_axis == 0, q[:, 1], q[:, 0])
        b = np.where(face_axis == 2, q[:, 1], q[:, 2])
        m = TEXTURES[1].shape[0]
        rgb[on_box] = TEXTURES[1][
            np.clip((b * (m - 1)).astype(int), 0, m - 1),
            np.clip((a * (m // 3 - 1)).astype(int) + face_axis * (m // 3), 0, m - 1),
        ]
    depth = (t * (d @ c2w[:3, 2])).reshape(intr.height, intr.width)
    return rgb.reshape(intr.height, intr.width, 3), on_box.reshape(intr.height, intr.width), depth


def arc_poses(n, span_deg=130.0, radius=0.42):
    """Cameras on an arc around the box, looking at it, elevation varying."""
    poses = []
    for k, az in enumerate(np.radians(np.linspace(0, span_deg, n))):
        el = np.radians(38 + 12 * np.sin(2.1 * k))
        eye = radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        poses.append(look_at(eye, [0.01 * np.sin(k), 0.0, 0.03]))
    return poses


def write_views(root, poses, intr=INTR, textured=True, masks=True, recorded_poses=None):
    """Views rendered from ``poses``, recorded with ``recorded_poses`` (default: the same)."""
    writer = DatasetWriter(root, metadata={"object_name": "box"})
    for c2w, recorded in zip(poses, recorded_poses or poses):
        rgb, mask, depth = render(c2w, intr, textured)
        writer.add_frame(rgb, recorded, intr, depth_m=depth, mask=mask if masks else None)
    return Dataset.load(root)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Ground-truth views (dataset with masks and depth) and one SfM run on them."""
    root = tmp_path_factory.mktemp("scene") / "box"
    truth = arc_poses(10)
    dataset = write_views(root, truth)
    names = [str(f.image_path.relative_to(root)) for f in dataset.frames]
    sfm = run_sfm(root, names, tmp_path_factory.mktemp("work"), intrinsics=INTR, num_threads=2)
    return dataset, truth, sfm


# --- alignment (pure geometry) --------------------------------------------------------------------


def test_umeyama_recovers_a_known_similarity_and_applies_it_to_poses():
    rng = np.random.default_rng(0)
    q = np.array([0.3, -0.2, 0.5, 0.8])
    true = Similarity(2.5, pose_to_matrix([0, 0, 0], q / np.linalg.norm(q))[:3, :3], np.array([1.0, -2.0, 0.5]))
    poses = arc_poses(6)
    src = np.array([p[:3, 3] for p in poses])
    fitted = umeyama(src, true.apply_points(src))
    assert np.isclose(fitted.scale, 2.5) and np.allclose(fitted.rotation, true.rotation)
    assert np.allclose(fitted.translation, true.translation)
    moved = true.apply_pose(poses[0])
    assert np.allclose(moved[:3, :3], true.rotation @ poses[0][:3, :3])
    assert np.isclose(np.linalg.det(moved[:3, :3]), 1.0)  # a camera is rotated, never scaled
    # an outlier is found and left out
    dst = true.apply_points(src) + rng.normal(0, 1e-4, src.shape)
    dst[2] += [0.3, 0, 0]
    sim, inliers = robust_umeyama(src, dst)
    assert inliers.tolist() == [True, True, False, True, True, True] and np.isclose(sim.scale, 2.5, rtol=1e-3)


def test_alignment_refuses_degenerate_centres():
    line = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], dtype=float)
    with pytest.raises(AlignmentError, match="on one line"):
        umeyama(line, line)
    with pytest.raises(AlignmentError, match="at least 3"):
        umeyama(line[:2], line[:2])
    with pytest.raises(AlignmentError, match="NaN"):
        umeyama(np.full((3, 3), np.nan), line[:3])


# --- SfM ----------------------------------------------------------------------------------------


def test_sfm_registers_every_view_and_matches_the_true_cameras_after_alignment(scene):
    dataset, truth, sfm = scene
    assert sfm.registered_fraction == 1.0 and sfm.mean_reprojection_error_px < 1.0
    assert sfm.intrinsics == INTR  # known intrinsics stay fixed
    report = align_poses(sfm.c2w, dict(enumerate(truth)))
    # The arc spans ~0.3 m; ray-cast views with exact intrinsics give sub-millimetre cameras.
    assert report.median_center_error_m < 1e-3 and report.median_rotation_error_deg < 0.2
    assert not report.outliers
    # near/far from the SfM points, scaled into metres, bracket the true depth of the box
    near, far = np.array(sfm.near_far[0]) * report.similarity.scale
    box_depth = np.nanmedian(np.where(render(truth[0])[1], render(truth[0])[2], np.nan))
    assert near < box_depth < far


def test_align_to_noisy_arm_poses_reports_the_noise_and_writes_metric_poses(scene, tmp_path):
    dataset, truth, _ = scene
    rng = np.random.default_rng(3)
    noisy = [perturb_pose(c2w, rng, 0.005, 2.0) for c2w in truth]
    arm = write_views(tmp_path / "arm", truth, recorded_poses=noisy)
    (arm.root / "ground_truth.json").write_text("{}")
    reports = []
    result = estimate_poses(arm.root, tmp_path / "aligned", align=True, num_threads=2, report=reports.append)
    assert {r.message for r in reports} >= {"features", "matching", "mapping"}
    residual = result.alignment
    # what is left after the fit is the arm's noise: ~5 mm and ~2 deg per frame
    assert 0.002 < residual.median_center_error_m < 0.008
    assert 1.0 < residual.median_rotation_error_deg < 3.0
    out = Dataset.load(tmp_path / "aligned")
    assert len(out) == 10 and out.has_depth and out.has_masks
    assert (out.root / "ground_truth.json").is_file() and out.metadata["poses"]["metric_robot_frame"]
    errors = np.array([pose_distance(f.c2w, t) for f, t in zip(out.frames, truth)])
    arm_errors = np.array([pose_distance(n, t) for n, t in zip(noisy, truth)])
    # closer to the truth than the arm: only the fit's error (noise averaged over 10 frames) is left
    assert np.median(errors[:, 0]) < 0.7 * np.median(arm_errors[:, 0])
    assert np.median(errors[:, 1]) < 0.5 * np.median(arm_errors[:, 1])
    assert result.mask_consistency is not None and not result.mask_consistency.inconsistent
    assert any("wrote 10 frames" in line for line in result.summary_lines())


def test_poses_command_prints_the_report(scene, tmp_path, capsys):
    from nerf_descriptor_ros.cli import main

    dataset = scene[0]
    assert main(["poses", str(dataset.root), "--align", "--threads", "2", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "registered 10/10 frames" in out and "aligned to the arm poses" in out
    assert len(Dataset.load(tmp_path / "out")) == 10
    assert main(["poses", str(tmp_path / "missing")]) == 2
    assert "neither a dataset nor a folder of images" in capsys.readouterr().err


def test_refine_corrects_a_wrong_focal_length_and_says_how_far_it_moved(scene, tmp_path):
    dataset, truth, _ = scene
    wrong = CameraIntrinsics(INTR.fx * 1.04, INTR.fy * 1.04, INTR.cx, INTR.cy, INTR.width, INTR.height)
    writer = DatasetWriter(tmp_path / "wrong")
    for frame in dataset.frames:
        writer.add_frame(frame.load_image(), frame.c2w, wrong)
    result = estimate_poses(tmp_path / "wrong", refine=True, num_threads=2)
    assert abs(result.sfm.intrinsics.fx / INTR.fx - 1) < 0.01
    assert any("intrinsics refined: fx" in line for line in result.summary_lines())
    assert result.alignment.median_center_error_m < 0.002


def test_folder_of_images_without_intrinsics_or_poses(scene, tmp_path):
    dataset, truth, _ = scene
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, frame in enumerate(dataset.frames[:6]):
        cv2.imwrite(str(folder / f"IMG_{i}.jpg"), frame.load_image()[:, :, ::-1])
    result = estimate_poses(folder, tmp_path / "out", num_threads=2)
    assert len(result.sfm.c2w) >= 5
    out = Dataset.load(tmp_path / "out")
    assert not out.has_depth and not out.metadata["poses"]["metric_robot_frame"]
    with pytest.raises(SfmError, match="no arm poses to align to"):
        estimate_poses(folder, align=True)


# --- bad input ----------------------------------------------------------------------------------


def test_textureless_and_segmented_views_get_a_clear_error(tmp_path):
    blank = write_views(tmp_path / "blank", arc_poses(4), textured=False, masks=False)
    with pytest.raises(SfmError, match="too textureless.*do not mask it out"):
        estimate_poses(blank.root, num_threads=2)
    # the seed's failure: object images with the background masked out leave too little to match
    writer = DatasetWriter(tmp_path / "segmented")
    for c2w in arc_poses(6):
        rgb, mask, _ = render(c2w)
        rgb[~mask] = 0
        writer.add_frame(rgb, c2w, INTR, mask=mask)
    with pytest.raises(SfmError, match="could not start.*do not mask it out"):
        estimate_poses(tmp_path / "segmented", num_threads=2)


def test_views_without_overlap_get_a_clear_error(tmp_path):
    poses = [look_at([0.4 * np.cos(a), 0.4 * np.sin(a), 0.3], [0, 0, 0]) for a in np.radians([0, 90, 180, 270])]
    ds = write_views(tmp_path / "far", poses, masks=False)
    with pytest.raises(SfmError, match="could not start.*too far apart"):
        estimate_poses(ds.root, num_threads=2)


def test_mixed_sizes_missing_files_and_cancel(tmp_path, scene):
    dataset, truth, _ = scene
    writer = DatasetWriter(tmp_path / "mixed")
    small = INTR.scaled(120, 90)
    for k, frame in enumerate(dataset.frames[:4]):
        img = frame.load_image()
        writer.add_frame(img if k else cv2.resize(img, (120, 90)), frame.c2w, small if k == 0 else INTR)
    with pytest.raises(SfmError, match="different cameras .*120x90"):
        estimate_poses(tmp_path / "mixed")
    names = ["images/frame_00000.png", "images/nope.png", "images/frame_00001.png"]
    with pytest.raises(SfmError, match="missing .*nope.png"):
        run_sfm(dataset.root, names, tmp_path / "w", intrinsics=INTR)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(StageCancelled):
        estimate_poses(dataset.root, tmp_path / "never", cancel=cancel)
    assert not (tmp_path / "never").exists()


# --- masks against poses -------------------------------------------------------------------------


def test_mask_consistency_flags_a_wrong_pose_and_a_wrong_mask(scene, tmp_path):
    dataset, truth, _ = scene
    good = check_mask_consistency(dataset)
    assert not good.inconsistent and min(good.coverage.values()) > 0.95
    rng = np.random.default_rng(0)
    writer = DatasetWriter(tmp_path / "bad")
    for k, (frame, c2w) in enumerate(zip(dataset.frames, truth)):
        mask = frame.load_mask()
        if k == 2:
            c2w = perturb_pose(c2w, rng, 0.03, 6.0)
        if k == 6:
            mask = np.roll(mask, 40, axis=1)
        writer.add_frame(frame.load_image(), c2w, INTR, mask=mask)
    bad = check_mask_consistency(Dataset.load(tmp_path / "bad"))
    assert bad.inconsistent == [2, 6], bad.coverage
    assert "frames [2, 6] disagree" in bad.summary()
