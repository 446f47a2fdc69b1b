"""Grasp keypoints: YAML specs, definition on training views (descriptor + 3D point from the
dataset's depth or a NeRF), storage with the model, the automatic grasp point, moved objects."""

import json

import cv2
import numpy as np
import pytest
import torch
from synthetic_scenes import (
    Scene,
    box_mesh,
    orbit_poses,
    procedural_colour,
    sphere_mesh,
    textured_objects_scene,
    write_scene_dataset,
)
from torch import nn

from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.descriptors.loss import sample_descriptors
from nerf_descriptor_ros.descriptors.model import export_model, load_model
from nerf_descriptor_ros.descriptors.network import DescriptorNet
from nerf_descriptor_ros.descriptors.view_geometry import world_points
from nerf_descriptor_ros.geometry import CameraIntrinsics, invert, look_at, pose_to_matrix
from nerf_descriptor_ros.keypoints.definition import (
    KEYPOINTS_NAME,
    Keypoint,
    KeypointError,
    KeypointSet,
    KeypointSpec,
    calibrate_keypoints,
    define_keypoint,
    keypoint_point,
    load_keypoint_specs,
    moved_point_pixel,
)
from nerf_descriptor_ros.keypoints.grasp_point import (
    _interior_pixels,
    auto_grasp_keypoints,
    auto_grasp_spec,
    graspable_pixels,
    object_view,
    visibility_depth,
)
from nerf_descriptor_ros.sim.thin_objects import make_thin_object

WIDTH, HEIGHT = 80, 60


@pytest.fixture(scope="module")
def scene():
    return textured_objects_scene()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, scene):
    root = tmp_path_factory.mktemp("keypoints") / "objects"
    return Dataset.load(write_scene_dataset(root, scene, orbit_poses(8, 0.35), WIDTH, HEIGHT))


def _model(path, seed=0):
    torch.manual_seed(seed)
    export_model(DescriptorNet(8, "resnet18", 32), path, (WIDTH, HEIGHT))
    return load_model(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _model(tmp_path_factory.mktemp("model") / "model")


def _object_pixel(frame, margin=3):
    """An object pixel well inside the mask, near the mask's centre."""
    import cv2

    interior = cv2.erode(frame.load_mask().astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
    rows, cols = np.nonzero(interior)
    i = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return float(cols[i]), float(rows[i])


def test_yaml_specs_load_and_bad_files_are_refused_with_the_reason(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "keypoints:\n  - {name: grasp, image_index: 3, u: 10, v: 20.5}\n"
        "  - {name: handle, image_index: 0, u: 1.5, v: 2}\n"
    )
    specs = load_keypoint_specs(good)
    assert specs == [KeypointSpec("grasp", 3, 10.0, 20.5), KeypointSpec("handle", 0, 1.5, 2.0)]
    bad = {
        "keypoints: []\n": "non-empty",
        "keypoints:\n  - {name: grasp, image_index: 3, u: 10}\n": "exactly the keys",
        "keypoints:\n  - {name: a, image_index: 0, u: 1, v: 1}\n  - {name: a, image_index: 1, u: 1, v: 1}\n": "unique",
        "keypoints:\n  - {name: ../x, image_index: 0, u: 1, v: 1}\n": "invalid keypoint name",
        "keypoints:\n  - {name: a, image_index: zero, u: 1, v: 1}\n": "must be numbers",
        "keypoints: [\n": "not valid YAML",
    }
    for text, reason in bad.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(KeypointError, match=reason):
            load_keypoint_specs(path)
    with pytest.raises(KeypointError, match="not found"):
        load_keypoint_specs(tmp_path / "missing.yaml")


def test_a_keypoint_gets_the_model_descriptor_and_the_surface_point_from_the_dataset_depth(dataset, model):
    frame = dataset.frames[2]
    u, v = _object_pixel(frame)
    keypoint = define_keypoint(model.describe, dataset, KeypointSpec("grasp", frame.index, u, v))
    descriptors = model.describe(frame.load_image())
    expected = sample_descriptors(descriptors, torch.tensor([[u, v]], dtype=torch.float32))[0]
    np.testing.assert_allclose(keypoint.descriptor, expected.numpy(), atol=1e-5)
    assert keypoint.point_source == "dataset_depth"
    # The point is on the object's surface: every other view whose depth sees it agrees.
    agree = 0
    for other in dataset.frames:
        cam = invert(other.c2w) @ np.append(keypoint.point_base, 1.0)
        intr = other.intrinsics
        pu, pv = intr.fx * cam[0] / cam[2] + intr.cx, intr.fy * cam[1] / cam[2] + intr.cy
        if 0 <= pu < WIDTH - 1 and 0 <= pv < HEIGHT - 1:
            seen = other.load_depth()[int(round(pv)), int(round(pu))]
            agree += abs(seen - cam[2]) < 0.004 or seen < cam[2]  # visible, or hidden behind
    assert agree >= 6
    z = frame.load_depth()[int(v), int(u)]
    ray = (
        np.array(
            [(u - frame.intrinsics.cx) / frame.intrinsics.fx, (v - frame.intrinsics.cy) / frame.intrinsics.fy, 1.0]
        )
        * z
    )
    np.testing.assert_allclose(keypoint.point_base, frame.c2w[:3, :3] @ ray + frame.c2w[:3, 3], atol=1e-9)


def test_keypoints_are_stored_beside_the_model_and_refused_for_other_weights(dataset, model, tmp_path):
    keypoints = KeypointSet.for_model(model, dataset)
    frame = dataset.frames[0]
    keypoints.put(define_keypoint(model.describe, dataset, KeypointSpec("grasp", 0, *_object_pixel(frame))))
    second = KeypointSpec("grasp", 1, *_object_pixel(dataset.frames[1]))
    keypoints.put(define_keypoint(model.describe, dataset, second))
    assert keypoints.names == ["grasp"] and keypoints["grasp"].spec.image_index == 1  # replaced
    path = keypoints.save(tmp_path)
    assert path == tmp_path / KEYPOINTS_NAME and not list(tmp_path.glob(".*tmp"))
    loaded = KeypointSet.load(model, path)
    assert loaded.names == ["grasp"] and loaded.dataset_root == str(dataset.root)
    np.testing.assert_array_equal(loaded.descriptors(), keypoints.descriptors())
    np.testing.assert_allclose(loaded["grasp"].point_base, keypoints["grasp"].point_base)

    other = _model(tmp_path / "other", seed=1)
    with pytest.raises(KeypointError, match="other model weights"):
        KeypointSet.load(other, path)
    data = json.loads(path.read_text())
    del data["keypoints"][0]["descriptor"]
    path.write_text(json.dumps(data))
    with pytest.raises(KeypointError, match="malformed"):
        KeypointSet.load(model, path)
    path.write_text("{not json")
    with pytest.raises(KeypointError, match="not readable JSON"):
        KeypointSet.load(model, path)
    assert len(KeypointSet.load(model, tmp_path / "none" / KEYPOINTS_NAME)) == 0


def test_keypoints_off_the_object_outside_the_image_or_on_unknown_frames_are_refused(dataset, model):
    frame = dataset.frames[0]
    rows, cols = np.nonzero(~frame.load_mask())
    cases = [
        (KeypointSpec("a", 0, float(cols[0]), float(rows[0])), "not on the object"),
        (KeypointSpec("a", 0, WIDTH + 5.0, 10.0), "outside frame 0"),
        (KeypointSpec("a", 99, 10.0, 10.0), "no frame with index 99"),
    ]
    for spec, reason in cases:
        with pytest.raises(KeypointError, match=reason):
            define_keypoint(model.describe, dataset, spec)


def test_automatic_grasp_point_is_near_the_top_centre_of_the_object_on_a_top_down_view(tmp_path, model):
    # One box: its top face is at z = 0.06 and centred on (0.01, -0.02).
    scene = Scene([box_mesh([0.01, -0.02, 0.03], [0.07, 0.05, 0.06])])
    dataset = Dataset.load(write_scene_dataset(tmp_path / "box", scene, orbit_poses(8, 0.35), WIDTH, HEIGHT))
    keypoints, choice = auto_grasp_keypoints(dataset, model, count=3)
    assert keypoints.names == ["grasp", "point_1", "point_2"]
    grasp = keypoints["grasp"]
    train, _ = dataset.split()
    steepest = max(train, key=lambda p: -dataset.frames[p].c2w[2, 2])
    assert grasp.spec.image_index == dataset.frames[steepest].index
    assert grasp.point_base[2] == pytest.approx(0.06, abs=0.002)
    # Within 0.3 of the half-extent (3.5 cm) of the middle, give or take a pixel (5 mm).
    assert np.linalg.norm(grasp.point_base[:2] - [0.01, -0.02]) < 0.3 * 0.035 + 0.005
    assert choice.candidates > 1 and choice.views == len(train) - 1
    assert f"of {choice.candidates} graspable pixels on {choice.views} training views" in choice.summary()
    # The other keypoints are spread over the object, away from the grasp point.
    for name in ("point_1", "point_2"):
        assert np.linalg.norm(keypoints[name].point_base - grasp.point_base) > 0.02


def _colour_as_descriptor(rgb: np.ndarray) -> torch.Tensor:
    """A 'descriptor' that is the pixel's colour: matches exactly where the texture is distinct."""
    return torch.from_numpy(rgb.astype(np.float32) / 255.0 * 10.0).permute(2, 0, 1)


@pytest.mark.parametrize("textured_side", [1.0, -1.0])
def test_the_automatic_grasp_point_is_the_graspable_spot_found_best_on_other_views(tmp_path, textured_side):
    # A box whose top is textured on one side of its middle (x = 0.01) and plain grey on the
    # other: the plain half cannot be localised, so the grasp point goes to the textured half.
    def colour(points):
        plain = np.full(points.shape[:-1] + (3,), 0.5)
        textured = textured_side * (points[..., :1] - 0.01) > 0
        return np.where(textured, procedural_colour(points, 1), plain)

    scene = Scene([box_mesh([0.01, -0.02, 0.03], [0.07, 0.05, 0.06])], object_colour=colour)
    dataset = Dataset.load(write_scene_dataset(tmp_path / "box", scene, orbit_poses(8, 0.35), WIDTH, HEIGHT))
    choice = auto_grasp_spec(dataset, _colour_as_descriptor)
    u, v = int(choice.spec.u), int(choice.spec.v)
    point = world_points(choice.view, [[u, v]], [choice.view.depth[v, u]])[0]
    assert textured_side * (point[0] - 0.01) > 0.002, point
    assert np.linalg.norm(point[:2] - [0.01, -0.02]) < 0.3 * 0.035 + 0.005
    assert choice.mean_error_px is not None and choice.mean_error_px < 1.5, choice
    assert choice.top_centre_error_px is None or choice.top_centre_error_px > choice.mean_error_px


def _eroded_interior(view, margin=3):
    """The old candidate rule: object pixels with depth that a (2 margin + 1)-square erosion keeps."""
    kernel = np.ones((2 * margin + 1,) * 2, np.uint8)
    rows, cols = np.nonzero((cv2.erode(view.mask.astype(np.uint8), kernel) > 0) & np.isfinite(view.depth))
    return np.stack([cols, rows], -1)


def test_a_wide_object_keeps_the_3_px_margin_candidates_exactly(dataset):
    deep = 0
    for frame in dataset.frames:
        view = object_view(dataset, frame)
        np.testing.assert_array_equal(_interior_pixels(view, 3), _eroded_interior(view))
        deep += cv2.distanceTransform(view.mask.astype(np.uint8), cv2.DIST_C, 3).max() >= 5
    assert deep == len(dataset.frames)  # every view is wide enough for the margin rule
    # An object cut by the image border: outside the image counts as object, as for the erosion.
    view = object_view(dataset, dataset.frames[0])
    view.mask = np.zeros_like(view.mask)
    view.mask[:20, 50:] = True
    view.depth = np.where(view.mask, 0.3, np.nan)
    np.testing.assert_array_equal(_interior_pixels(view, 3), _eroded_interior(view))
    assert len(graspable_pixels(view, 3, 0.01, 0.3)[0]) > 0


def test_a_thin_fork_lying_flat_gets_a_grasp_point_on_its_ridge(tmp_path, model):
    """A fork's 6 mm handle and 3 mm tines are 1-3 px wide at 160x120: no pixel is 3 px inside
    the mask, so the candidates are its ridge; the chosen pixel is on the fork."""
    import open3d as o3d

    fork = make_thin_object("fork", 0)
    poses = orbit_poses(8, 0.35, target=(0.0, 0.0, 0.005))
    dataset = Dataset.load(write_scene_dataset(tmp_path / "fork", Scene([fork]), poses, 160, 120))
    for frame in dataset.frames:
        assert len(_eroded_interior(object_view(dataset, frame))) == 0  # the old rule had nothing
    choice = auto_grasp_spec(dataset, _colour_as_descriptor)
    u, v = int(choice.spec.u), int(choice.spec.v)
    assert choice.view.mask[v, u] and choice.candidates >= 3
    point = world_points(choice.view, [[u, v]], [choice.view.depth[v, u]])[0]
    surface = o3d.t.geometry.RaycastingScene()
    surface.add_triangles(fork.vertices.astype(np.float32), fork.faces.astype(np.uint32))
    assert surface.compute_distance(o3d.core.Tensor(point[None].astype(np.float32))).numpy()[0] < 0.001
    assert choice.mean_error_px is not None and choice.mean_error_px < 1.5, choice
    # The live stage's call: the grasp point and one more keypoint, both on the fork.
    keypoints, _ = auto_grasp_keypoints(dataset, model, count=2)
    for keypoint in keypoints:
        assert choice.view.mask[int(keypoint.spec.v), int(keypoint.spec.u)]
        assert keypoint.point_base is not None


def test_a_top_down_view_without_the_object_falls_back_to_the_next_steepest(tmp_path):
    scene = Scene([box_mesh([0.01, -0.02, 0.03], [0.07, 0.05, 0.06])])
    away = look_at([0.3, 0.3, 0.5], [0.3, 0.31, 0.0])  # the steepest view, showing only the table
    poses = orbit_poses(8, 0.35) + [away]
    dataset = Dataset.load(write_scene_dataset(tmp_path / "box", scene, poses, WIDTH, HEIGHT))
    train, _ = dataset.split()
    assert max(train, key=lambda p: -dataset.frames[p].c2w[2, 2]) == 8
    choice = auto_grasp_spec(dataset, _colour_as_descriptor)
    steepest_seeing = max(train[:-1], key=lambda p: -dataset.frames[p].c2w[2, 2])
    assert choice.spec.image_index == dataset.frames[steepest_seeing].index
    assert choice.view.mask[int(choice.spec.v), int(choice.spec.u)]


def test_empty_masks_on_every_view_are_the_one_clear_error(tmp_path):
    dataset = Dataset.load(write_scene_dataset(tmp_path / "empty", Scene([]), orbit_poses(4, 0.35), WIDTH, HEIGHT))
    with pytest.raises(KeypointError, match="no training view .* shows an object pixel") as error:
        auto_grasp_spec(dataset, _colour_as_descriptor)
    assert "\n" not in str(error.value)


class _SphereField(nn.Module):
    """An opaque sphere of radius 0.05 m at the origin (scene box +-0.1 m)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def density(self, x):
        return torch.where(x.norm(dim=-1) < 0.5, 1e4, 0.0) + self.dummy

    def forward(self, x, dirs, appearance=None):
        return self.density(x), torch.ones(len(x), 3) * 0.5


def _sphere_nerf_and_dataset_without_depth(root):
    """A NeRF that is exactly the sphere of a one-view dataset whose depth images were removed."""
    from nerf_descriptor_ros.nerf.config import config_from_dict
    from nerf_descriptor_ros.nerf.model import build_model
    from nerf_descriptor_ros.nerf.rays import SceneBox

    nerf = build_model(
        config_from_dict({"model": "fast", "background": "black"}),
        SceneBox(np.full(3, -0.1), np.full(3, 0.1)),
        1,
        "black",
    )
    nerf.field = _SphereField()
    nerf.set_step_size(0.0005)
    nerf.eval()
    scene = Scene([sphere_mesh([0, 0, 0], 0.05)])
    root = write_scene_dataset(root, scene, [look_at([0.2, 0.1, 0.15], [0, 0, 0])], WIDTH, HEIGHT)
    (root / "depth").rename(root / "no_depth")
    manifest = json.loads((root / "transforms.json").read_text())
    for entry in manifest["frames"]:
        del entry["depth_file_path"]
    (root / "transforms.json").write_text(json.dumps(manifest))
    return nerf, scene, Dataset.load(root)


def test_without_dataset_depth_the_point_comes_from_the_nerf_expected_depth(tmp_path):
    nerf, _, dataset = _sphere_nerf_and_dataset_without_depth(tmp_path / "sphere")
    frame = dataset.frames[0]
    assert frame.load_depth() is None
    u, v = _object_pixel(frame)
    point, source = keypoint_point(frame, u, v, nerf)
    assert source == "nerf_depth"
    assert np.linalg.norm(point) == pytest.approx(0.05, abs=0.0015)  # on the sphere
    assert np.dot(point, frame.c2w[:3, 3]) > 0  # on the side facing the camera
    assert keypoint_point(frame, u, v, None) == (None, "none")
    with pytest.raises(KeypointError, match="no depth"):
        keypoint_point(frame, 1.0, 1.0, nerf)  # a ray that misses the sphere


def test_without_dataset_depth_the_grasp_choice_tells_hidden_points_by_the_nerf_depth(tmp_path):
    nerf, scene, dataset = _sphere_nerf_and_dataset_without_depth(tmp_path / "sphere")
    frame = dataset.frames[0]
    _, truth, mask = scene.render(frame.c2w, frame.intrinsics)
    depth = visibility_depth(dataset, frame, nerf)
    assert depth.shape == truth.shape
    inside = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert np.nanmedian(np.abs(depth[inside] - truth[inside])) < 0.003
    assert np.isnan(depth[~mask]).mean() > 0.95
    with pytest.raises(KeypointError, match="no depth and no NeRF"):
        visibility_depth(dataset, frame, None)


def test_moved_point_pixel_follows_the_object_and_respects_occlusion():
    intr = CameraIntrinsics.from_fov(WIDTH, HEIGHT, 45.0)
    T_base_cam = look_at([0.4, 0.0, 0.3], [0.0, 0.0, 0.0])
    then = pose_to_matrix([0.0, 0.0, 0.0], [0, 0, 0, 1])
    now = pose_to_matrix([0.02, -0.03, 0.0], [0, 0, np.sin(0.3), np.cos(0.3)])
    point = np.array([0.01, 0.02, 0.03])
    uv = moved_point_pixel(point, then, now, T_base_cam, intr)
    moved = now[:3, :3] @ point + now[:3, 3]
    cam = invert(T_base_cam) @ np.append(moved, 1)
    np.testing.assert_allclose(uv, [intr.fx * cam[0] / cam[2] + intr.cx, intr.fy * cam[1] / cam[2] + intr.cy])
    depth = np.full((HEIGHT, WIDTH), cam[2], np.float32)
    assert moved_point_pixel(point, then, now, T_base_cam, intr, depth) is not None
    assert moved_point_pixel(point, then, now, T_base_cam, intr, depth - 0.05) is None  # hidden
    assert moved_point_pixel(point + [0, 0, 5.0], then, now, T_base_cam, intr) is None  # off the image


def test_calibration_puts_the_not_found_distance_between_object_present_and_absent(dataset):
    """With descriptors that are the surface's 3D point (background: far away), a keypoint's best
    match where it is visible is ~0 away and the nearest background pixel far: the threshold
    lies halfway. A keypoint without a 3D point is left to the matcher's default."""
    background = np.array([5.0, 5.0, 5.0], dtype=np.float32)

    def describe_by_position(rgb):
        frame = next(f for f in dataset.frames if np.array_equal(f.load_image(), rgb))
        depth, mask = frame.load_depth(), frame.load_mask()
        rows, cols = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]]
        intr = frame.intrinsics
        cam = np.stack([(cols - intr.cx) / intr.fx * depth, (rows - intr.cy) / intr.fy * depth, depth], -1)
        world = cam @ frame.c2w[:3, :3].T + frame.c2w[:3, 3]
        world = np.where(mask[..., None] & np.isfinite(world), world, background)
        return torch.from_numpy(world.astype(np.float32)).permute(2, 0, 1)

    frame = dataset.frames[1]
    keypoint = define_keypoint(describe_by_position, dataset, KeypointSpec("top", frame.index, *_object_pixel(frame)))
    keypoint.descriptor = keypoint.point_base.astype(np.float32)  # exactly its own position
    pointless = define_keypoint(describe_by_position, dataset, KeypointSpec("flat", frame.index, *_object_pixel(frame)))
    pointless.point_base = None
    calibrate_keypoints(describe_by_position, dataset, [keypoint, pointless])
    nearest_background = np.linalg.norm(background - keypoint.point_base)
    # present: a pixel centre lies within half a pixel footprint of the point (millimetres)
    assert 0.3 * nearest_background < keypoint.max_distance < 0.55 * nearest_background
    assert pointless.max_distance is None
    stored = KeypointSet("sha", 3, keypoints=[keypoint]).to_json()["keypoints"][0]
    assert Keypoint.from_json(stored).max_distance == keypoint.max_distance
