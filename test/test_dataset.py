"""The on-disk dataset: nerfstudio conventions, atomic frames, safe names, clear errors."""

import json
import os
import stat

import numpy as np
import pytest

from nerf_descriptor_ros.data.dataset import (
    Dataset,
    DatasetError,
    DatasetWriter,
    atomic_write_bytes,
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


def _snapshot(root):
    """Bytes and mtime of every file under ``root`` but the manifest."""
    return {
        p.relative_to(root): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.name != "transforms.json"
    }


def test_resume_after_removed_entries_and_orphans_overwrites_nothing(tmp_path):
    """Removing a frame's entry (what the missing-image error advises) must not free its index."""
    rng = np.random.default_rng(6)
    root = tmp_path / "obj"
    w = DatasetWriter(root)
    for _ in range(4):
        w.add_frame(_frame(rng), np.eye(4), INTR, depth_m=np.ones((24, 32)), mask=np.ones((24, 32), bool))
    manifest = json.loads((root / "transforms.json").read_text())
    del manifest["frames"][1]
    (root / "transforms.json").write_text(json.dumps(manifest))
    # Files no manifest entry names: a write killed before its manifest update, in any frame folder.
    (root / "images" / "frame_00005.png").write_bytes(b"orphan image")
    (root / "masks" / "frame_00007.png").write_bytes(b"orphan mask")
    before = _snapshot(root)

    resumed = DatasetWriter(root, resume=True)
    assert resumed.frame_count == 3
    new = [
        resumed.add_frame(_frame(rng), np.eye(4), INTR, depth_m=np.ones((24, 32)), mask=np.ones((24, 32), bool))
        for _ in range(2)
    ]
    assert new == [8, 9]
    after = _snapshot(root)
    assert {k: after[k] for k in before} == before  # no existing file rewritten, not even in place
    indices = [f.index for f in Dataset.load(root).frames]
    assert indices == [0, 2, 3, 8, 9] and len(set(indices)) == len(indices)


def test_resume_removes_temporary_files_left_by_a_kill(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "obj"
    DatasetWriter(root).add_frame(_frame(rng), np.eye(4), INTR)
    leftovers = [root / ".transforms.json.k2_x9abc.tmp", root / "images" / ".frame_00001.png.0a1b2c3d.tmp"]
    kept = [root / "notes.tmp", root / "images" / ".keep"]  # not the atomic writer's: left alone
    for p in leftovers + kept:
        p.write_bytes(b"partial")
    w = DatasetWriter(root, resume=True)
    assert [p.exists() for p in leftovers + kept] == [False, False, True, True]
    assert w.add_frame(_frame(rng), np.eye(4), INTR) == 1


def test_atomic_write_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    """A power cut after the write returns must not lose the file: its folder entry is synced too."""
    real_fsync, synced = os.fsync, []
    target = tmp_path / "new" / "sub" / "x.bin"

    def recording_fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append((st.st_ino, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    atomic_write_bytes(target, b"payload")
    inode = {p.stat().st_ino: p for p in (tmp_path, tmp_path / "new", tmp_path / "new" / "sub")}
    # each new folder's parent after its mkdir, then the file's folder once the file is there
    assert [(inode[i], there) for i, there in synced] == [
        (tmp_path, False),
        (tmp_path / "new", False),
        (tmp_path / "new" / "sub", True),
    ]


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
    nan_lens = CameraIntrinsics(INTR.fx, INTR.fy, INTR.cx, INTR.cy, 32, 24, [np.nan, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(DatasetError, match=r"distortion coefficients \[nan, 0.0, 0.0, 0.0, 0.0\] contain NaN"):
        w.add_frame(_frame(rng), np.eye(4), nan_lens)
    with pytest.raises(DatasetError, match="mask image is 16x24 but the colour image is 32x24"):
        DatasetWriter(tmp_path / "masked").add_frame(_frame(rng), np.eye(4), INTR, mask=np.ones((24, 16), bool))
    assert (tmp_path / "obj" / "transforms.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "obj").rglob("*.png")) == ["frame_00000.png"]
    assert not (tmp_path / "masked" / "images").exists()


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
