"""Foreign pose formats: stated conventions, exact import -> export -> import round trips, clear errors."""

import json
import shutil

import cv2
import numpy as np
import pycolmap
import pytest

from nerf_descriptor_ros.data.colmap import export_colmap, import_colmap, intrinsics_to_colmap
from nerf_descriptor_ros.data.dataset import Dataset, DatasetError, DatasetWriter
from nerf_descriptor_ros.data.foreign import NEAR_FAR_KEY
from nerf_descriptor_ros.data.llff import LLFF_FILE, export_llff, import_llff, llff_rows_to_poses, poses_to_llff_rows
from nerf_descriptor_ros.data.masks import attach_masks
from nerf_descriptor_ros.data.nerfstudio_format import export_nerfstudio, import_transforms
from nerf_descriptor_ros.geometry import (
    CameraIntrinsics,
    invert,
    look_at,
    opencv_to_opengl,
    transform_points,
)

W, H = 40, 30


def _poses(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        look_at(rng.normal(0, 0.05, 3) + [0.5 * np.cos(a), 0.5 * np.sin(a), 0.4], rng.normal(0, 0.02, 3))
        for a in np.linspace(0, 2, n)
    ]


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def _dataset(path, intrinsics, n=4, depth=True, masks=False):
    writer = DatasetWriter(path)
    for i, (c2w, rgb) in enumerate(zip(_poses(n), _images(n))):
        intr = intrinsics[i % len(intrinsics)]
        d = np.full((H, W), 0.4 + 0.01 * i) if depth else None
        m = np.zeros((H, W), bool) if masks else None
        if masks:
            m[5:20, 10 + i : 30] = True
        writer.add_frame(rgb, c2w, intr, depth_m=d, mask=m)
    return Dataset.load(path)


def _write_llff(root, poses, hwf, bounds, images):
    (root / "images").mkdir(parents=True)
    for i, img in enumerate(images):
        cv2.imwrite(str(root / "images" / f"IMG_{i:03d}.png"), img[:, :, ::-1])
    rows = poses_to_llff_rows(poses, hwf, bounds)
    np.save(root / LLFF_FILE, rows)
    return rows


def _assert_same_frames(a: Dataset, b: Dataset, atol=0.0):
    assert len(a) == len(b)
    for fa, fb in zip(a.frames, b.frames):
        if atol:
            assert np.allclose(fa.c2w, fb.c2w, atol=atol, rtol=0)
        else:
            assert np.array_equal(fa.c2w, fb.c2w)
        assert fa.intrinsics == fb.intrinsics
        assert np.array_equal(fa.load_image(), fb.load_image())
        for load in ("load_mask", "load_depth"):
            ma, mb = getattr(fa, load)(), getattr(fb, load)()
            assert (ma is None) == (mb is None)
            if ma is not None:
                assert np.array_equal(ma, mb, equal_nan=True)


# --- conventions ---------------------------------------------------------------------------------


def test_llff_columns_are_down_right_back_of_the_opencv_camera():
    c2w = look_at([0.3, -0.2, 0.5], [0, 0, 0])
    row = poses_to_llff_rows([c2w], np.array([[H, W, 50.0]]), np.array([[0.1, 2.0]]))[0]
    m = row[:15].reshape(3, 5)
    assert np.array_equal(m[:, 0], c2w[:3, 1])  # down = OpenCV +y
    assert np.array_equal(m[:, 1], c2w[:3, 0])  # right = OpenCV +x
    assert np.array_equal(m[:, 2], -c2w[:3, 2])  # back = OpenCV -z (the camera looks along -back)
    assert np.array_equal(m[:, 3], c2w[:3, 3]) and np.array_equal(m[:, 4], [H, W, 50.0])
    assert np.array_equal(row[15:], [0.1, 2.0])
    poses, hwf, bounds = llff_rows_to_poses(row[None])
    assert np.array_equal(poses[0], c2w)


def test_colmap_conventions_match_pycolmaps_own_projection(tmp_path):
    intr = CameraIntrinsics(45.0, 44.0, 19.2, 14.7, W, H, [0.01, -0.002, 0.0005, 0.0001, 0.0])
    ds = _dataset(tmp_path / "ds", [intr], n=2, depth=False)
    export_colmap(ds.root, tmp_path / "colmap")
    rec = pycolmap.Reconstruction(str(tmp_path / "colmap" / "sparse" / "0"))
    points = np.random.default_rng(1).normal(0, 0.1, (20, 3))
    for frame in ds.frames:
        image = rec.find_image_with_name(frame.image_path.name)
        cam = transform_points(invert(frame.c2w), points)
        # COLMAP puts the image corner at 0, OpenCV (and we) the first pixel centre: half a pixel
        # apart; COLMAP's OPENCV distortion is OpenCV's.
        ours, _ = cv2.projectPoints(cam, np.zeros(3), np.zeros(3), intr.K, np.array(intr.distortion))
        theirs = rec.camera(image.camera_id).img_from_cam(cam)
        assert np.allclose(theirs, ours[:, 0] + 0.5, atol=1e-6)
        assert np.allclose(image.cam_from_world().matrix(), invert(frame.c2w)[:3], atol=1e-12)


def test_nerfstudio_intrinsics_put_the_image_corner_at_zero(tmp_path):
    intr = CameraIntrinsics(45.0, 46.0, 19.25, 14.5, W, H)
    ds = _dataset(tmp_path / "ds", [intr], n=2)
    export_nerfstudio(ds.root, tmp_path / "ns")
    manifest = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    assert (manifest["cx"], manifest["cy"]) == (19.75, 15.0)
    assert "nerf_descriptor_ros" not in manifest
    assert np.array_equal(manifest["frames"][1]["transform_matrix"], opencv_to_opengl(ds.frames[1].c2w))


# --- round trips ---------------------------------------------------------------------------------


def test_llff_import_export_import_is_exact(tmp_path):
    poses, images = _poses(5), _images(5)
    hwf = np.tile([H, W, 47.5], (5, 1))
    bounds = np.column_stack([np.linspace(0.2, 0.3, 5), np.linspace(1.0, 1.4, 5)])
    rows = _write_llff(tmp_path / "llff", poses, hwf, bounds, images)

    first = import_llff(tmp_path / "llff", tmp_path / "ds1")
    f0 = first.frames[0].intrinsics
    assert (f0.fx, f0.fy, f0.cx, f0.cy) == (47.5, 47.5, (W - 1) / 2, (H - 1) / 2)
    for frame, c2w, img in zip(first.frames, poses, images):
        assert np.array_equal(frame.c2w, c2w) and np.array_equal(frame.load_image(), img)
    assert np.array_equal(first.metadata[NEAR_FAR_KEY], bounds)

    export_llff(first.root, tmp_path / "llff2")
    assert np.array_equal(np.load(tmp_path / "llff2" / LLFF_FILE), rows)
    second = import_llff(tmp_path / "llff2", tmp_path / "ds2")
    _assert_same_frames(first, second)
    assert second.metadata[NEAR_FAR_KEY] == first.metadata[NEAR_FAR_KEY]


def test_llff_downsampled_images_scale_the_focal_length(tmp_path):
    _write_llff(
        tmp_path / "llff", _poses(2), np.tile([4 * H, 4 * W, 200.0], (2, 1)), np.tile([0.1, 1.0], (2, 1)), _images(2)
    )
    (tmp_path / "llff" / "images").rename(tmp_path / "llff" / "images_4")
    ds = import_llff(tmp_path / "llff", tmp_path / "ds", images="images_4")
    assert ds.frames[0].intrinsics.fx == 50.0


def test_dataset_to_llff_takes_bounds_from_depth_and_masks_along(tmp_path):
    ds = _dataset(tmp_path / "ds", [CameraIntrinsics.from_fov(W, H, 50)], masks=True)
    export_llff(ds.root, tmp_path / "llff")
    rows = np.load(tmp_path / "llff" / LLFF_FILE)
    assert np.allclose(rows[:, 15:], [[0.4 + 0.01 * i] * 2 for i in range(4)], atol=1e-3)
    back = import_llff(tmp_path / "llff", tmp_path / "back")
    assert back.has_masks and not back.has_depth
    for a, b in zip(ds.frames, back.frames):
        assert np.array_equal(a.c2w, b.c2w) and a.intrinsics == b.intrinsics
        assert np.array_equal(a.load_mask(), b.load_mask())
    # what a NeRF trains on (poses, cameras, pixels, masks) comes back identical; depth stays behind
    assert back.content_hash() == ds.content_hash()


def test_blender_synthetic_import_and_nerfstudio_round_trip(tmp_path):
    src = tmp_path / "blender"
    rng = np.random.default_rng(4)
    angle = 0.69
    poses = _poses(3)
    for split, idx in (("train", [0, 1]), ("test", [2])):
        (src / split).mkdir(parents=True)
        frames = []
        for i in idx:
            rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
            rgba[:, : W // 2, 3] = 0  # transparent left half
            rgba[:, W // 2 :, 3] = 255
            cv2.imwrite(str(src / split / f"r_{i}.png"), rgba)
            frames.append(
                {
                    "file_path": f"./{split}/r_{i}",
                    "rotation": 0.1,
                    "transform_matrix": opencv_to_opengl(poses[i]).tolist(),
                }
            )
        (src / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))

    for background, value in (("white", 255), ("black", 0)):
        ds = import_transforms(src, tmp_path / f"ds_{background}", background=background)
        intr = ds.frames[0].intrinsics
        assert np.isclose(intr.fx, 0.5 * W / np.tan(angle / 2)) and intr.fy == intr.fx
        assert (intr.cx, intr.cy) == ((W - 1) / 2, (H - 1) / 2)
        assert ds.metadata["source_split"] == ["train", "train", "test"]
        img, mask = ds.frames[0].load_image(), ds.frames[0].load_mask()
        assert np.all(img[:, : W // 2] == value) and not mask[:, : W // 2].any() and mask[:, W // 2 :].all()
        assert all(np.array_equal(f.c2w, p) for f, p in zip(ds.frames, poses))

    export_nerfstudio(tmp_path / "ds_white", tmp_path / "ns")
    again = import_transforms(tmp_path / "ns", tmp_path / "ds_again")
    _assert_same_frames(Dataset.load(tmp_path / "ds_white"), again)


def test_nerfstudio_import_export_is_exact_with_depth_masks_and_per_frame_cameras(tmp_path):
    src = tmp_path / "ns"
    (src / "images").mkdir(parents=True)
    (src / "depth").mkdir()
    (src / "masks").mkdir()
    poses, images = _poses(3), _images(3)
    frames = []
    for i in range(3):
        cv2.imwrite(str(src / "images" / f"{i}.jpg"), images[i][:, :, ::-1])
        cv2.imwrite(str(src / "depth" / f"{i}.png"), np.full((H, W), 500 + i, np.uint16))
        cv2.imwrite(str(src / "masks" / f"{i}.png"), np.full((H, W), 255 * (i % 2), np.uint8))
        frames.append(
            {
                "file_path": f"images/{i}.jpg",
                "depth_file_path": f"depth/{i}.png",
                "mask_path": f"masks/{i}.png",
                "transform_matrix": opencv_to_opengl(poses[i]).tolist(),
            }
        )
    frames[2]["fl_x"] = 51.25
    (src / "transforms.json").write_text(
        json.dumps(
            {
                "camera_model": "OPENCV",
                "fl_x": 50.0,
                "fl_y": 50.5,
                "cx": 20.25,
                "cy": 15.5,
                "w": W,
                "h": H,
                "k1": 0.01,
                "k2": 0.0,
                "p1": 0.0,
                "p2": 0.0,
                "frames": frames,
            }
        )
    )
    first = import_transforms(src, tmp_path / "ds1")
    assert (first.frames[0].intrinsics.cx, first.frames[0].intrinsics.cy) == (19.75, 15.0)
    assert first.frames[2].intrinsics.fx == 51.25 and first.frames[0].intrinsics.distortion[0] == 0.01
    assert np.allclose(first.frames[1].load_depth(), 0.501)
    assert not first.frames[0].load_mask().any() and first.frames[1].load_mask().all()
    jpeg_pixels = cv2.imread(str(src / "images" / "1.jpg"))[:, :, ::-1]
    assert np.array_equal(first.frames[1].load_image(), jpeg_pixels)

    export_nerfstudio(first.root, tmp_path / "ns2")
    exported = json.loads((tmp_path / "ns2" / "transforms.json").read_text())
    assert (exported["cx"], exported["cy"], exported["frames"][2]["fl_x"]) == (20.25, 15.5, 51.25)
    second = import_transforms(tmp_path / "ns2", tmp_path / "ds2")
    _assert_same_frames(first, second)


def test_colmap_import_export_import_matches_to_round_off(tmp_path):
    cams = [
        CameraIntrinsics(45.0, 44.0, 19.2, 14.7, W, H, [0.01, -0.002, 0.0005, 0.0001, 0.0]),
        CameraIntrinsics(40.0, 40.0, 19.5, 14.5, W, H),
        CameraIntrinsics(41.0, 42.0, 20.0, 14.0, W, H, [0.02, 0.0, 0.0, 0.0, 0.001]),
    ]
    native = _dataset(tmp_path / "ds", cams, n=5, depth=False, masks=True)
    export_colmap(native.root, tmp_path / "colmap")
    rec = pycolmap.Reconstruction(str(tmp_path / "colmap" / "sparse" / "0"))
    assert sorted(c.model.name for c in rec.cameras.values()) == ["FULL_OPENCV", "OPENCV", "PINHOLE"]
    first = import_colmap(tmp_path / "colmap", tmp_path / "ds1")
    _assert_same_frames(native, first, atol=1e-12)

    export_colmap(first.root, tmp_path / "colmap2")
    second = import_colmap(tmp_path / "colmap2" / "sparse" / "0", tmp_path / "ds2")
    _assert_same_frames(first, second, atol=1e-12)


def test_colmap_points_give_llff_bounds(tmp_path):
    intr = CameraIntrinsics.from_fov(W, H, 50)
    poses, images = _poses(3), _images(3)
    points = np.random.default_rng(0).normal(0, 0.03, (50, 3))
    (tmp_path / "colmap" / "images").mkdir(parents=True)
    rec = pycolmap.Reconstruction()
    model, params = intrinsics_to_colmap(intr)
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model=model, width=W, height=H, params=params))
    depths = []
    for image_id, (c2w, img) in enumerate(zip(poses, images), start=1):
        cam = transform_points(invert(c2w), points)
        depths.append(cam[:, 2])
        uv = intr.project(cam)[0] + 0.5
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=f"{image_id}.png", keypoints=uv, camera_id=1, image_id=image_id),
            pycolmap.Rigid3d(invert(c2w)[:3]),
        )
        cv2.imwrite(str(tmp_path / "colmap" / "images" / f"{image_id}.png"), img[:, :, ::-1])
    for k, xyz in enumerate(points):
        track = pycolmap.Track()
        for image_id in (1, 2, 3):
            track.add_element(image_id, k)
        rec.add_point3D(xyz, track)
    (tmp_path / "colmap" / "sparse" / "0").mkdir(parents=True)
    rec.write_text(str(tmp_path / "colmap" / "sparse" / "0"))  # the text variant reads too

    ds = import_colmap(tmp_path / "colmap", tmp_path / "imported")
    expected = [np.percentile(z, [0.1, 99.9]) for z in depths]
    assert np.allclose(ds.metadata[NEAR_FAR_KEY], expected, rtol=1e-9)
    _assert_same_frames(ds, import_colmap(tmp_path / "colmap", tmp_path / "again"))
    for frame, c2w, img in zip(ds.frames, poses, images):
        assert np.allclose(frame.c2w, c2w, atol=1e-9) and np.array_equal(frame.load_image(), img)


# --- bad input -----------------------------------------------------------------------------------


def test_existing_destination_and_missing_images_leave_nothing_behind(tmp_path):
    _write_llff(tmp_path / "llff", _poses(3), np.tile([H, W, 40.0], (3, 1)), np.tile([0.1, 1.0], (3, 1)), _images(3))
    (tmp_path / "taken").mkdir()
    with pytest.raises(DatasetError, match="already exists"):
        import_llff(tmp_path / "llff", tmp_path / "taken")
    (tmp_path / "llff" / "images" / "IMG_001.png").unlink()
    with pytest.raises(DatasetError, match="3 poses but .* 2 images"):
        import_llff(tmp_path / "llff", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llff", "taken"]  # no partial output


def test_mixed_image_sizes_and_partial_masks_are_refused(tmp_path):
    images = _images(3)
    _write_llff(tmp_path / "llff", _poses(3), np.tile([H, W, 40.0], (3, 1)), np.tile([0.1, 1.0], (3, 1)), images)
    (tmp_path / "llff" / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "llff" / "masks" / "IMG_000.png"), np.zeros((H, W), np.uint8))
    with pytest.raises(DatasetError, match="masks for 1 of 3 images"):
        import_llff(tmp_path / "llff", tmp_path / "out")
    for i in (1, 2):
        cv2.imwrite(str(tmp_path / "llff" / "masks" / f"IMG_00{i}.png"), np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DatasetError, match="masks must have their image's size"):
        import_llff(tmp_path / "llff", tmp_path / "out")
    shutil.rmtree(tmp_path / "llff" / "masks")
    cv2.imwrite(str(tmp_path / "llff" / "images" / "IMG_002.png"), cv2.resize(images[2], (W // 2 + 3, H // 2)))
    with pytest.raises(DatasetError, match="IMG_002.png is 23x15 but its camera is 40x30"):
        import_llff(tmp_path / "llff", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_llff_export_refuses_what_llff_cannot_hold(tmp_path):
    off_centre = _dataset(tmp_path / "a", [CameraIntrinsics(40, 40, 23.0, 14.5, W, H)])
    with pytest.raises(DatasetError, match=r"moves pixels .* by up to 3\.50 px"):
        export_llff(off_centre.root, tmp_path / "out")
    export_llff(off_centre.root, tmp_path / "out", max_pixel_shift=4.0)
    two_cams = _dataset(tmp_path / "b", [CameraIntrinsics.from_fov(W, H, 50), CameraIntrinsics.from_fov(W, H, 60)])
    with pytest.raises(DatasetError, match="one camera for all images"):
        export_llff(two_cams.root, tmp_path / "out2")
    no_depth = _dataset(tmp_path / "c", [CameraIntrinsics.from_fov(W, H, 50)], depth=False)
    with pytest.raises(DatasetError, match="pass --bounds NEAR FAR"):
        export_llff(no_depth.root, tmp_path / "out3")
    export_llff(no_depth.root, tmp_path / "out3", bounds=(0.1, 2.0))
    assert np.array_equal(np.load(tmp_path / "out3" / LLFF_FILE)[:, 15:], np.tile([0.1, 2.0], (4, 1)))


def test_foreign_files_with_bad_content_get_clear_errors(tmp_path):
    (tmp_path / "llff").mkdir()
    np.save(tmp_path / "llff" / LLFF_FILE, np.zeros((3, 15)))
    with pytest.raises(DatasetError, match="must be N x 17"):
        import_llff(tmp_path / "llff", tmp_path / "out")
    ds = _dataset(tmp_path / "ours", [CameraIntrinsics.from_fov(W, H, 50)], n=2)
    with pytest.raises(DatasetError, match="already a nerf_descriptor_ros dataset"):
        import_transforms(ds.root, tmp_path / "out")
    (tmp_path / "fish").mkdir()
    (tmp_path / "fish" / "transforms.json").write_text(
        json.dumps(
            {
                "camera_model": "OPENCV_FISHEYE",
                "fl_x": 1,
                "w": W,
                "h": H,
                "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}],
            }
        )
    )
    with pytest.raises(DatasetError, match="OPENCV_FISHEYE.*not supported"):
        import_transforms(tmp_path / "fish", tmp_path / "out")
    with pytest.raises(DatasetError, match="not a COLMAP sparse model"):
        import_colmap(tmp_path / "fish", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_attach_masks_writes_only_when_every_mask_is_there(tmp_path):
    ds = _dataset(tmp_path / "ds", [CameraIntrinsics.from_fov(W, H, 50)], n=3)
    manifest_before = (ds.root / "transforms.json").read_bytes()
    (tmp_path / "sam").mkdir()
    for i in range(2):  # as a segmentation tool might write them: another suffix, RGB
        mask = np.zeros((H, W, 3), np.uint8)
        mask[:10, : 10 + i] = 255
        cv2.imwrite(str(tmp_path / "sam" / f"frame_{i:05d}.jpg"), mask)
    with pytest.raises(DatasetError, match="masks for 2 of 3 images"):
        attach_masks(ds.root, tmp_path / "sam")
    assert (ds.root / "transforms.json").read_bytes() == manifest_before
    cv2.imwrite(str(tmp_path / "sam" / "frame_00002.png"), np.zeros((H, W), np.uint8))
    updated = attach_masks(ds.root, tmp_path / "sam")
    assert updated.has_masks and updated.frames[1].load_mask()[:8, :8].all()
    assert not updated.frames[2].load_mask().any()
    with pytest.raises(DatasetError, match="already has masks"):
        attach_masks(ds.root, tmp_path / "sam")


def test_command_line_import_export_and_option_checks(tmp_path, capsys):
    from nerf_descriptor_ros.cli import main

    _write_llff(tmp_path / "llff", _poses(3), np.tile([H, W, 40.0], (3, 1)), np.tile([0.1, 1.0], (3, 1)), _images(3))
    assert main(["import", "llff", str(tmp_path / "llff"), str(tmp_path / "ds")]) == 0
    assert "3 frames in" in capsys.readouterr().out
    assert main(["export", "llff", str(tmp_path / "ds"), str(tmp_path / "again")]) == 0
    assert np.array_equal(np.load(tmp_path / "again" / LLFF_FILE), np.load(tmp_path / "llff" / LLFF_FILE))
    assert main(["export", "colmap", str(tmp_path / "ds"), str(tmp_path / "ds")]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "colmap", str(tmp_path / "ds"), str(tmp_path / "c"), "--bounds", "1", "2"])
    assert "--bounds applies to llff only" in capsys.readouterr().err
