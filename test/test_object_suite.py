"""benchmarks/object_suite.py's bookkeeping on made-up demo reports: per-object results and failures
by cause, the summary, the contact sheet, resuming from the work folder, and the demo options it
drives (thin:KIND:SEED objects, sim parameters). No demo runs here (the suite itself takes hours;
its --quick run is a manual check, see the issue notes)."""

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


report_mod = _load("object_suite_report")
suite_mod = _load("object_suite")

ENTRY = {"name": "duck", "kind": "a duck", "object": "duck_vhacd.urdf"}
TRIALS = [
    {"trial": 0, "found": True, "keypoint_error_px": 2.0, "keypoint_error_mm": 1.5, "grasp_success": True},
    {
        "trial": 1,
        "found": True,
        "keypoint_error_px": 14.0,
        "keypoint_error_mm": 12.0,
        "grasp_success": False,
        "grasp_message": "grasp at (0.4, 0.0, 0.05) in panda_link0: the object did not rise with the gripper "
        "(rose 3 mm, at least 50 mm needed)",
    },
    {
        "trial": 2,
        "found": False,
        "keypoint_error_px": None,
        "grasp_success": False,
        "grasp_message": "no grasp target: the grasp keypoint was not found",
    },
    {
        "trial": 3,
        "found": False,
        "keypoint_error_px": None,
        "grasp_success": False,
        "note": "no reachable view of the grasp point",
    },
    {
        "trial": 4,
        "found": True,
        "keypoint_error_px": None,
        "grasp_success": False,
        "note": "the grasp point is hidden from this view",
        "grasp_message": "attempt 1/2: grasp at (0.4, 0.1, 0.05) in panda_link0: unreachable: the pre-grasp pose: "
        "misses; not tried again: the fresh grasp target is where the failed one was",
    },
]
PARTIAL = {
    "object": "duck_vhacd.urdf",
    "sizes": {"views": 24},
    "capture": {"views_requested": 24, "frames": 21, "captured": 21, "unreachable": 3},
    "heldout_psnr_db": 27.123456,
    "depth_median_abs_err_m": 0.004,
    "descriptors": {"aepe_px": 20.0, "pck3": 0.1, "pck5": 0.2, "auc_1_100": 0.8, "median_px": 9.0},
    "stage_seconds": {"capture": 30.0},
}


def test_a_finished_demo_gives_its_figures_and_every_trial_failure_by_cause():
    report = {
        **PARTIAL,
        "trials": 5,
        "keypoint_within_10px": 0.2,
        "keypoint_median_px": 7.5,
        "per_trial": TRIALS,
        "grasp_success_rate": 0.2,
        "any_point": {"visible": 30, "found_rate": 0.9, "median_mm": 9.5, "x": 1},
    }
    result = report_mod.object_result(ENTRY, report, 0, "[demo] report\n", 123.4)
    assert result["status"] == "ok" and result["failure"] is None
    assert result["views"] == {"requested": 24, "reached": 21, "unreachable": 3}
    assert result["heldout_psnr_db"] == 27.1235 and result["descriptors"]["auc_1_100"] == 0.8
    live = result["live"]
    assert live["trials"] == 5 and live["grasps_lifted"] == 1
    assert live["keypoint_median_px"] == 7.5  # the demo's own summary wins over the recomputed 8.0
    assert live["keypoint_within_10px"] == 0.2 and live["keypoint_found_rate"] == 0.6
    assert result["any_point"] == {"visible": 30, "found_rate": 0.9, "median_mm": 9.5}
    assert result["failures_by_cause"] == {
        "capture_unreachable_views": 3,
        "grasp_point_hidden": 1,
        "keypoint_not_found": 1,
        "keypoint_off_by_more_than_10px": 1,
        "lift_failed": 1,
        "live_view_unreachable": 1,
        "no_grasp_target": 1,
        "pick_unreachable": 1,
    }
    assert result["stages_completed"] == ["capture", "train", "evaluate", "live", "any_point"]


def test_a_demo_that_died_in_the_live_stage_keeps_the_earlier_figures_and_says_why_in_one_line():
    progress = {**PARTIAL, "per_trial": TRIALS[:1]}
    output = (
        "[demo] train: NeRF held-out PSNR 27.12 dB\n[demo] trial 1/3 (seed 1000): keypoint 2.0 px\n"
        "error: node descriptor exited with code 1 (last log line: IndexError: index 0 is out of bounds); "
        "its log: /tmp/x/live/descriptor.log\n"
    )
    result = report_mod.object_result(ENTRY, progress, 2, output, 60.0)
    assert result["status"] == "failed" and result["exit_code"] == 2
    failure = result["failure"]
    assert failure["stage"] == "live" and failure["cause"] == "node_exited" and failure["node"] == "descriptor"
    assert failure["message"].startswith("node descriptor exited with code 1") and "\n" not in failure["message"]
    assert result["heldout_psnr_db"] == 27.1235 and result["live"]["trials"] == 1
    assert result["live"]["keypoint_median_px"] == 2.0 and result["live"]["grasps_lifted"] == 1
    assert result["failures_by_cause"]["live:node_exited"] == 1


@pytest.mark.parametrize(
    "output, stage, cause",
    [
        ("Traceback (most recent call last):\n  File x\nValueError: bad\n", "capture", "crashed"),
        ("error: training failed: NeRF diverged; the trainer's log is in /x\n", "train", "training_failed"),
        ("error: keypoint matches after the move did not happen within 60 s; node logs in /x\n", "train", "timeout"),
        ("", "capture", "crashed"),
        (
            "error: only 0 ground-truth correspondences between the 1 held-out views of /d (at least 100 needed)\n",
            "train",
            "too_few_heldout_correspondences",
        ),
    ],
)
def test_failures_without_progress_are_put_at_the_first_stage_not_done(output, stage, cause):
    progress = {"capture": PARTIAL["capture"]} if stage == "train" else None
    result = report_mod.object_result(ENTRY, progress, 1, output, 1.0)
    assert (result["failure"]["stage"], result["failure"]["cause"]) == (stage, cause)
    assert result["failure"]["message"] == report_mod.failure_line(output)


def test_grasp_causes_come_from_the_last_attempt_that_says_why():
    cause = report_mod.grasp_cause
    assert cause("grasp at (1, 2, 3) in panda_link0: the object slipped out of the fingers (rose 60 mm)") == "slipped"
    assert cause("grasp at (1, 2, 3) in base: refused: the object is static (mass 0)") == "pick_refused"
    assert cause("the pick service /sim_robot/pick_and_lift is not available") == "pick_service_unavailable"
    two = (
        "attempt 1/2: grasp at (1, 2, 3) in b: unreachable: the pre-grasp pose: misses; "
        "attempt 2/2: grasp at (1, 2, 3) in b: the object did not rise with the gripper (rose 0 mm)"
    )
    assert cause(two) == "lift_failed"
    table = "grasp at (1, 2, 0) in b: unreachable: the approach would touch the table 62% of the way; the arm did not"
    assert cause(table) == "pick_unreachable"
    assert cause(f"attempt 1/2: {table}; no fresh grasp target within 5 s to try again (x)") == "pick_unreachable"
    assert cause("something new") == "grasp_failed" and cause("") == "grasp_failed"


def test_summary_counts_objects_failures_and_medians():
    ok = report_mod.object_result(ENTRY, {**PARTIAL, "per_trial": TRIALS}, 0, "", 1.0)
    failed = report_mod.object_result(
        {**ENTRY, "name": "fork"},
        {**PARTIAL, "heldout_psnr_db": 20.0},
        2,
        "error: node descriptor was killed by signal 11; its log: x\n",
        1.0,
    )
    summary = report_mod.summarize([ok, failed])
    assert summary["objects"] == 2 and summary["completed"] == 1
    assert summary["failed"]["fork"]["cause"] == "node_exited" and summary["failed"]["fork"]["stage"] == "live"
    assert summary["median_heldout_psnr_db"] == pytest.approx((27.1235 + 20.0) / 2, abs=1e-3)
    assert summary["trials"] == 5 and summary["grasps_lifted"] == 1
    assert summary["failures_by_cause"]["capture_unreachable_views"] == 6
    assert summary["failures_by_cause"]["node_exited"] == 1


def test_the_object_pose_is_judged_on_the_objects_without_a_declared_symmetry():
    """The pose is scored against the true motion without symmetries: a symmetric object's is
    reported, not judged."""

    def pose(within):
        figures = {"trials": 10, "refused": 1, "within_tolerance": within, "median_mm": 2.0, "median_deg": 1.5}
        return {"visible": 30, "object_pose": {"depth_matches_icp": {**figures, "p90_mm": 9.0, "p90_deg": 8.0}}}

    plain = report_mod.object_result(ENTRY, {**PARTIAL, "any_point": pose(0.9)}, 0, "", 1.0)
    mug = report_mod.object_result(
        {**ENTRY, "name": "mug", "symmetry": "z"}, {**PARTIAL, "any_point": pose(0.1)}, 0, "", 1.0
    )
    thin = report_mod.object_result({**ENTRY, "name": "fork"}, {**PARTIAL, "any_point": pose(0.4)}, 0, "", 1.0)
    # A whisk's symmetry comes from the demo's report (--symmetry auto), with the pose scored both ways.
    twins = pose(0.3)
    twins["object_pose"]["symmetry_aware"] = pose(0.95)["object_pose"]
    whisk = report_mod.object_result(
        {**ENTRY, "name": "whisk"}, {**PARTIAL, "symmetry": "x:8@0,0,0.03", "any_point": twins}, 0, "", 1.0
    )
    assert plain["object_pose"]["within_tolerance"] == 0.9 and not plain["object_pose"]["symmetry_declared"]
    assert mug["object_pose"]["symmetry_declared"] and plain["any_point"] == {"visible": 30}
    assert whisk["object_pose"]["symmetry_declared"] and whisk["object_pose"]["within_tolerance"] == 0.3
    assert whisk["object_pose"]["symmetry_aware"]["within_tolerance"] == 0.95
    assert "symmetry_aware" not in plain["object_pose"]
    summary = report_mod.summarize([plain, mug, thin, whisk])
    assert summary["object_pose_within_tolerance_without_symmetry"] == {ENTRY["name"]: 0.9, "fork": 0.4}
    assert summary["object_pose_worst_without_symmetry"] == 0.4


def _png(path: Path, colour, shape=(60, 80)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((*shape, 3), np.uint8)
    image[:] = colour
    cv2.imwrite(str(path), image)
    return path


def test_contact_sheet_has_one_row_per_object_with_the_nerf_render_and_missing_pictures_marked(tmp_path):
    dataset = tmp_path / "duck"
    _png(dataset / "images" / "frame_00000.png", (255, 0, 0))
    heldout = np.zeros((60, 240, 3), np.uint8)
    heldout[:, :80], heldout[:, 80:160], heldout[:, 160:] = (0, 0, 255), (0, 255, 0), (255, 0, 0)
    (dataset / "nerf" / "renders").mkdir(parents=True)
    cv2.imwrite(str(dataset / "nerf" / "renders" / "heldout_00.png"), heldout)
    _png(dataset / "demo" / "live_trial_00.png", (0, 255, 255))
    pictures = report_mod.object_pictures(dataset)
    assert pictures["descriptors"] is None and pictures["live"].name == "live_trial_00.png"
    result = report_mod.object_result(ENTRY, PARTIAL, 0, "", 1.0)
    failed = report_mod.object_result({**ENTRY, "name": "fork"}, None, 2, "error: boom\n", 1.0)
    path = report_mod.contact_sheet(
        [(result, pictures), (failed, report_mod.object_pictures(tmp_path / "none"))], tmp_path / "sheet.png"
    )
    sheet = cv2.imread(str(path))
    h, w = report_mod.TILE_HEIGHT, report_mod.TILE_HEIGHT * 4 // 3
    assert sheet.shape == (24 + 2 * h, report_mod.LABEL_WIDTH + 4 * w, 3)
    row = sheet[24 : 24 + h]
    centre = lambda column: row[h - 10, report_mod.LABEL_WIDTH + column * w + w // 2].tolist()  # noqa: E731
    assert centre(0) == [255, 0, 0]  # the capture frame
    assert centre(1) == [0, 255, 0]  # the NeRF render: the middle of target | render | depth
    assert centre(2) == [90, 90, 90]  # no descriptor picture: a grey tile
    assert centre(3) == [0, 255, 255]
    label = sheet[24 + h : 24 + 2 * h, : report_mod.LABEL_WIDTH]
    assert (label[..., 2] > 150).any() and ((label[..., 0] < 60) & (label[..., 2] > 150)).any()  # red FAILED line


def test_objects_with_a_result_are_not_run_again_and_the_suite_json_collects_them(tmp_path, monkeypatch):
    work = tmp_path / "work"
    for name, status in (("duck", "ok"), ("fork", "failed")):
        entry = next(e for e in suite_mod.OBJECTS if e["name"] == name)
        result = report_mod.object_result(entry, PARTIAL, 0 if status == "ok" else 2, "error: x\n", 5.0)
        result["work_dir"] = str(work / name)
        (work / name).mkdir(parents=True)
        (work / name / report_mod.RESULT_NAME).write_text(json.dumps(result))

    def never(*args, **kwargs):
        raise AssertionError("an object with a result was run again")

    monkeypatch.setattr(suite_mod, "run_object", never)
    out = tmp_path / "suite.json"
    code = suite_mod.main(["--out", str(out), "--work-dir", str(work), "--objects", "fork", "duck", "--quick"])
    assert code == 0
    suite = json.loads(out.read_text())
    assert [o["name"] for o in suite["objects"]] == ["duck", "fork"]  # the suite's order
    assert suite["summary"]["completed"] == 1 and list(suite["summary"]["failed"]) == ["fork"]
    assert suite["mode"] == "quick" and suite["settings"]["trials"] == suite_mod.QUICK["trials"]
    assert Path(suite["contact_sheet"]).is_file()


def test_the_suite_is_at_least_eight_kinds_of_objects_with_clutter_and_a_light_change_and_one_thin_quick():
    objects = {e["name"]: e for e in suite_mod.OBJECTS}
    plain = [e for e in suite_mod.OBJECTS if not e.get("sim_params") and not e.get("live_sim_params")]
    assert len({e["object"] for e in plain}) >= 8
    assert sum(e["object"].startswith("thin:") for e in plain) >= 3
    assert any("distractors" in e.get("sim_params", {}) for e in suite_mod.OBJECTS)
    assert any("light_color" in e.get("live_sim_params", {}) for e in suite_mod.OBJECTS)
    assert 2 <= len(suite_mod.QUICK_OBJECTS) <= 3
    assert any(objects[n]["object"].startswith("thin:") for n in suite_mod.QUICK_OBJECTS)


def test_demo_command_is_an_argument_list_with_the_objects_scene(tmp_path, monkeypatch):
    monkeypatch.setattr(suite_mod.shutil, "which", lambda name: "/bin/nerf-descriptor")
    args = type("Args", (), {"work_dir": str(tmp_path), "device": "cpu", "trial_seed": 1000})()
    clutter = next(e for e in suite_mod.OBJECTS if e["name"] == "duck_clutter")
    cmd = suite_mod.demo_command(clutter, tmp_path / "duck_clutter", {"trials": 3, "nerf_seconds": 30.0}, args)
    assert cmd[:2] == ["/bin/nerf-descriptor", "demo"] and "--trials" in cmd and "--nerf-seconds" in cmd
    assert cmd[cmd.index("--sim-param") + 1] == f'distractors="{suite_mod.DISTRACTORS}"'
    assert cmd[cmd.index("--symmetry") + 1] == "auto"  # the demo resolves it: none, or a thin object's own
    mug = next(e for e in suite_mod.OBJECTS if e["name"] == "mug")
    mug_cmd = suite_mod.demo_command(mug, tmp_path / "mug", {}, args)
    assert mug_cmd[mug_cmd.index("--symmetry") + 1] == "z"  # scored as the body of revolution it looks like
    torus = next(e for e in suite_mod.OBJECTS if e["name"] == "torus")
    source = Path(suite_mod.demo_command(torus, tmp_path / "torus", {}, args)[3])
    assert source.suffix == ".urdf" and "torus_textured.obj" in source.read_text()


def test_demo_takes_thin_objects_and_sim_parameters(tmp_path):
    from nerf_descriptor_ros.commands.demo import _object_source, _sim_params, _symmetry
    from nerf_descriptor_ros.errors import NerfDescriptorError
    from nerf_descriptor_ros.sim.thin_objects import symmetry_declaration

    urdf = Path(_object_source("thin:fork:3", tmp_path))
    assert urdf.is_file() and urdf.parent == tmp_path / "objects" and urdf.name == "fork_3.urdf"
    assert _object_source("duck_vhacd.urdf", tmp_path) == "duck_vhacd.urdf"
    for bad in ("thin:spoon:0", "thin:fork:x", "thin:fork"):
        with pytest.raises(NerfDescriptorError):
            _object_source(bad, tmp_path)
    # --symmetry auto: a generated whisk declares its loops' turns; other objects declare none; given, it stands.
    assert _symmetry("auto", "thin:whisk:0") == symmetry_declaration("whisk", 0) != "none"
    assert _symmetry("auto", "thin:fork:3") == _symmetry("auto", "duck_vhacd.urdf") == "none"
    assert _symmetry("z", "thin:whisk:0") == "z"
    assert _sim_params(["light_color=[1.0, 0.5, 0.5]", "distractors=a.urdf,b.urdf", "distractor_seed=3"]) == {
        "light_color": [1.0, 0.5, 0.5],
        "distractors": "a.urdf,b.urdf",
        "distractor_seed": 3,
    }
    for bad in ("no_value", "light_colour=[1, 1, 1]", "object_source=x.urdf"):
        with pytest.raises(NerfDescriptorError):
            _sim_params([bad])


def test_the_demo_summary_scores_the_grasp_keypoint_against_symmetric_twins_only_when_declared():
    from nerf_descriptor_ros.commands.demo import summarize_trials

    def trial(mm, twin=None, found=True):
        record = {"found": found, "grasp_success": found, "keypoint_error_px": 1.0 if found else None}
        record["keypoint_error_mm"] = mm
        if twin is not None:
            record["keypoint_error_mm_symmetric"] = twin
        return record

    plain = summarize_trials([trial(3.0), trial(30.0), trial(None, found=False)])
    assert plain["keypoint_within_10mm"] == pytest.approx(1 / 3, abs=1e-4) and plain["keypoint_median_mm"] == 16.5
    assert "keypoint_within_10mm_symmetric" not in plain
    # The 30 mm miss sits 2 mm from a twin; a keypoint not found stays a miss either way.
    twins = summarize_trials([trial(3.0, 3.0), trial(30.0, 2.0), trial(None, found=False)])
    assert twins["keypoint_within_10mm"] == plain["keypoint_within_10mm"]
    assert twins["keypoint_within_10mm_symmetric"] == pytest.approx(2 / 3, abs=1e-4)
    assert twins["keypoint_median_mm_symmetric"] == 2.5
