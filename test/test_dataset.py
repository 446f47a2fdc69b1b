"""The on-disk dataset: nerfstudio conventions, atomic frames, safe names, clear errors."""

import json

import numpy as np
import pytest

from nerf_descriptor_ros.data.dataset import (
    Dataset,
    DatasetError,
    DatasetWriter,
    object_dataset_path,
    validate_object_name,
)
from nerf_descriptor_ros.geometry import CameraIntrinsics, look_at, opencv_to_opengl

INTR = CameraIntrinsics.from_fov(32, 24, 55)


def _frame(rng):
    return rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)


def test_write_then_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    writer = DatasetWriter(tmp_path / "duck", metadata={"object_name": "duck"})
    poses, images = [], []
    for i in range(3):
        c2w = look_at([0.4, 0.1 * i, 0.5], [0, 0, 0])
        img = _frame(rng)
        depth = np.full((24, 32), 0.5 + 0.01 * i, dtype=np.float32)
        depth[0, 0] = np.nan
        writer.add_frame(img, c2w, INTR, stamp_ns=1000 + i, depth_m=depth)
        poses.append(c2w)
        images.append(img)
    ds = Dataset.load(tmp_path / "duck")
    assert len(ds) == 3 and ds.has_depth and not ds.has_masks
    manifest = json.loads((tmp_path / "duck" / "transforms.json").read_text())
    assert manifest["camera_model"] == "OPENCV" and manifest["w"] == 32
    # nerfstudio counts the principal point from the image corner: ours + half a pixel
    assert manifest["cx"] == INTR.cx + 0.5 and manifest["cy"] == INTR.cy + 0.5
    for i, frame in enumerate(ds.frames):
        assert np.allclose(frame.c2w, poses[i])
        # the manifest holds the OpenGL convention, as nerfstudio reads it
        assert np.allclose(manifest["frames"][i]["transform_matrix"], opencv_to_opengl(poses[i]))
        assert np.array_equal(frame.load_image(), images[i])
        depth = frame.load_depth()
        assert np.isnan(depth[0, 0]) and abs(depth[5, 5] - (0.5 + 0.01 * i)) < 1e-3
        assert frame.stamp_ns == 1000 + i
        assert np.allclose(frame.intrinsics.K, INTR.K)


def test_existing_dataset_needs_resume_and_resume_appends(tmp_path):
    rng = np.random.default_rng(1)
    DatasetWriter(tmp_path / "obj").add_frame(_frame(rng), np.eye(4), INTR)
    with pytest.raises(DatasetError, match="already holds a dataset"):
        DatasetWriter(tmp_path / "obj")
    w = DatasetWriter(tmp_path / "obj", resume=True)
    assert w.add_frame(_frame(rng), np.eye(4), INTR) == 1
    assert len(Dataset.load(tmp_path / "obj")) == 2


def test_orphan_image_from_a_killed_write_is_ignored(tmp_path):
    rng = np.random.default_rng(2)
    DatasetWriter(tmp_path / "obj").add_frame(_frame(rng), np.eye(4), INTR)
    (tmp_path / "obj" / "images" / "frame_00001.png").write_bytes(b"half a png")
    (tmp_path / "obj" / ".transforms.json.abc.tmp").write_text("{")
    assert len(Dataset.load(tmp_path / "obj")) == 1


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "x" * 200, "sp ace", "é"])
def test_unsafe_object_names_are_refused(tmp_path, name):
    with pytest.raises(DatasetError, match="invalid object name"):
        object_dataset_path(tmp_path, name)


def test_symlink_escaping_data_root_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(DatasetError, match="outside the data root"):
        object_dataset_path(tmp_path / "root", "link")
    assert validate_object_name("mug_2.v1") == "mug_2.v1"


def test_bad_inputs_are_refused_without_touching_the_manifest(tmp_path):
    rng = np.random.default_rng(3)
    w = DatasetWriter(tmp_path / "obj")
    w.add_frame(_frame(rng), np.eye(4), INTR)
    before = (tmp_path / "obj" / "transforms.json").read_bytes()
    bad_pose = np.eye(4)
    bad_pose[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        w.add_frame(_frame(rng), bad_pose, INTR)
    with pytest.raises(DatasetError, match="camera info says"):
        w.add_frame(np.zeros((10, 10, 3), np.uint8), np.eye(4), INTR)
    with pytest.raises(DatasetError, match="depth must be given"):
        w.add_frame(_frame(rng), np.eye(4), INTR, depth_m=np.ones((24, 32)))
    assert (tmp_path / "obj" / "transforms.json").read_bytes() == before


def test_load_reports_missing_files_and_corrupt_manifest(tmp_path):
    rng = np.random.default_rng(4)
    w = DatasetWriter(tmp_path / "obj")
    for _ in range(2):
        w.add_frame(_frame(rng), np.eye(4), INTR)
    (tmp_path / "obj" / "images" / "frame_00001.png").unlink()
    with pytest.raises(DatasetError, match="file_path 'images/frame_00001.png' is missing"):
        Dataset.load(tmp_path / "obj")
    (tmp_path / "obj" / "transforms.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        Dataset.load(tmp_path / "obj")
    with pytest.raises(DatasetError, match="no transforms.json"):
        Dataset.load(tmp_path)


def test_split_is_fixed_and_disjoint(tmp_path):
    rng = np.random.default_rng(5)
    w = DatasetWriter(tmp_path / "obj")
    for _ in range(20):
        w.add_frame(_frame(rng), np.eye(4), INTR)
    ds = Dataset.load(tmp_path / "obj")
    train, held = ds.split(eval_every=8)
    assert held == [4, 12] and set(train).isdisjoint(held) and len(train) + len(held) == 20
