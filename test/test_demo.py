"""The main job end to end at toy sizes: capture, training through the trainer node's action,
held-out evaluation and live trials with the descriptor and manipulation nodes, all over DDS.
Checks that every stage runs and reports, not the quality (see the issue notes and benchmarks)."""

import json

import pytest

from nerf_descriptor_ros.cli import main
from nerf_descriptor_ros.keypoints.any_point import ANY_POINT_COUNT

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_demo_runs_every_stage_and_writes_its_report(ros_domain, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(
        [
            "demo",
            "--views",
            "16",
            "--width",
            "64",
            "--height",
            "48",
            "--nerf-seconds",
            "15",
            "--descriptor-iterations",
            "20",
            "--trials",
            "2",
            "--device",
            "cpu",
            "--data-root",
            str(tmp_path / "data"),
            "--name",
            "toy",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, printed + captured.err  # the error line goes to stderr
    report = json.loads(out.read_text())
    assert report["trials"] == 2 and len(report["per_trial"]) == 2
    assert report["symmetry"] == "none"  # --symmetry auto on an object that is not a generated one
    assert "keypoint_within_10mm_symmetric" not in report
    assert 0.0 <= report["keypoint_within_10px"] <= 1.0 and 0.0 <= report["grasp_success_rate"] <= 1.0
    assert 0.0 <= report["keypoint_within_10mm"] <= 1.0
    measured = [t for t in report["per_trial"] if t.get("keypoint_error_px") is not None]
    assert all(t.get("keypoint_error_mm") is None or t["keypoint_error_mm"] >= 0 for t in measured)
    assert set(report["stage_seconds"]) >= {
        "capture",
        "train_nerf",
        "train_correspondences",
        "train_descriptors",
        "evaluate",
        "live",
    }
    assert report["heldout_psnr_db"] > 10 and 0.0 <= report["descriptors"]["auc_1_100"] <= 1.0
    any_point = report["any_point"]
    assert "skipped" in any_point or (
        any_point["placements"] == 2
        and any_point["view_ranges"]["elevation_deg"] == [45.0, 75.0]
        and any_point["keypoints"] == ANY_POINT_COUNT  # the sampled keypoints, not the pose points
        and any_point["symmetry"].startswith("none declared")
        and any_point["object_pose"]["depth_matches_icp"]["trials"] >= any_point["views"] > 0  # on the same views
    ), any_point
    for trial in report["per_trial"]:
        assert isinstance(trial["grasp_success"], bool) and trial["grasp_message"]
    demo_dir = tmp_path / "data" / "toy" / "demo"
    assert json.loads((demo_dir / "report.json").read_text()) == report
    assert (demo_dir / "pck_curve.png").is_file() and (demo_dir / "heldout_matches.png").is_file()
    assert "[demo] report" in printed and "grasp" in printed and "any-point" in printed
    assert "skipped" in any_point or "object pose within 5 mm and 3 deg" in printed
