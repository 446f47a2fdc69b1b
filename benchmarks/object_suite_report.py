"""The object suite's bookkeeping (``benchmarks/object_suite.py``): one object's result from its demo
report and exit, failures by cause, the suite's summary and its contact sheet. Plain functions on
JSON and PNG files (no ROS, no simulator), so that ``test/test_object_suite.py`` checks them on
made-up reports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from nerf_descriptor_ros.commands.demo import node_object_pose, summarize_trials

RESULT_NAME = "result.json"  # per object, in <work>/<name>/: written once its demo has ended
# The demo's stages in order, each with the report key that its success leaves behind.
STAGES = (
    ("capture", "capture"),
    ("train", "heldout_psnr_db"),
    ("evaluate", "descriptors"),
    ("live", "trials"),
    ("any_point", "any_point"),
)
# One demo failure line -> its cause; the first pattern found wins.
RUN_CAUSES = (
    ("node_exited", r"^node \S+ (exited with code|was killed by signal)"),
    ("timeout", r"did not happen within|did not finish within|timed out|suite timeout"),
    ("training_failed", r"training failed"),
    ("capture_failed", r"no frame was captured|capture did not start|ground truth was not saved|view sweep"),
    ("object_not_loaded", r"cannot load|not found \(looked for|expected a \.urdf"),
    ("no_grasp_keypoint", r"grasp keypoint .* has no 3d point"),
    ("too_few_heldout_correspondences", r"ground-truth correspondences between"),
)
# One pick's answer (the manipulation node's ~/grasp message) -> its cause.
GRASP_CAUSES = (
    ("no_grasp_target", r"^no grasp target"),
    ("pick_service_unavailable", r"is not available|no answer from"),
    ("pick_unreachable", r"unreachable"),
    ("pick_refused", r"refused"),
    ("slipped", r"slipped out of the fingers"),
    ("lift_failed", r"did not rise with the gripper"),
)
TILE_HEIGHT = 176
LABEL_WIDTH = 300


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def failure_line(output: str) -> str:
    """The line that says why a command failed: its last ``error: ...`` line, else its last line
    (a traceback's exception)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return one_line(errors[-1].removeprefix("error:").strip())
    return one_line(lines[-1]) if lines else "no output"


def run_cause(message: str) -> str:
    text = message.lower()
    return next((cause for cause, pattern in RUN_CAUSES if re.search(pattern, text)), "crashed")


def grasp_cause(message: str) -> str:
    """Why a pick failed, from the manipulation node's answer: its last attempt that says why
    (a refusal to try again names no new cause)."""
    # Attempts are joined by "; " (which a reason may contain too): split only where one begins.
    pieces = re.split(r"; (?=attempt \d+/\d+: |not tried again|no fresh grasp target)", str(message))
    parts = [re.sub(r"^attempt \d+/\d+: ", "", p.strip()) for p in pieces if p.strip()]
    telling = [p for p in parts if not p.startswith(("not tried again", "no fresh grasp target"))] or parts
    if not telling:
        return "grasp_failed"
    last = re.sub(r"^grasp at \([^)]*\) in \S+: ", "", telling[-1]).lower()
    return next((cause for cause, pattern in GRASP_CAUSES if re.search(pattern, last)), "grasp_failed")


def trial_failures(trials: list[dict], tolerance_px: float = 10.0) -> dict[str, int]:
    """Per-trial failures counted by cause: the view, the keypoint (no match, off by more than
    ``tolerance_px``), the pick and the lift."""
    counts: dict[str, int] = {}

    def count(cause: str) -> None:
        counts[cause] = counts.get(cause, 0) + 1

    for trial in trials:
        note = trial.get("note", "")
        if "no reachable view" in note:
            count("live_view_unreachable")
            continue  # nothing else was tried
        if "hidden" in note:
            count("grasp_point_hidden")
        elif not trial.get("found"):
            count("keypoint_not_found")
        elif trial.get("keypoint_error_px") is not None and trial["keypoint_error_px"] > tolerance_px:
            count(f"keypoint_off_by_more_than_{tolerance_px:g}px")
        if not trial.get("grasp_success"):
            count(grasp_cause(trial.get("grasp_message", "")))
    return dict(sorted(counts.items()))


def completed_stages(report: dict) -> list[str]:
    return [stage for stage, key in STAGES if key in report]


def object_result(entry: dict, report: dict | None, exit_code: int, output: str, wall_s: float) -> dict:
    """One object's record: the demo's figures (its final report, else the progress it left) and
    its failures by cause; a demo that did not finish is a failure of the first stage it did not
    complete, with the one line that says why."""
    report = report or {}
    done = completed_stages(report)
    result: dict = {
        "name": entry["name"],
        "kind": entry["kind"],
        "object": entry["object"],
        "scene": {k: entry[k] for k in ("sim_params", "live_sim_params") if entry.get(k)},
        "status": "ok" if exit_code == 0 else "failed",
        "exit_code": exit_code,
        "wall_seconds": round(wall_s, 1),
        "stages_completed": done,
        "failure": None,
    }
    if exit_code != 0:
        message = failure_line(output)
        stage = next((s for s, _ in STAGES if s not in done), "report")
        result["failure"] = {"stage": stage, "cause": run_cause(message), "message": message}
        node = re.match(r"node (\S+) (exited|was killed)", message)
        if node:
            result["failure"]["node"] = node.group(1)
    capture = report.get("capture")
    if capture:
        result["views"] = {
            "requested": capture.get("views_requested"),
            "reached": capture.get("frames"),
            "unreachable": capture.get("unreachable"),
        }
    for key in ("heldout_psnr_db", "depth_median_abs_err_m"):
        if report.get(key) is not None:
            result[key] = round(float(report[key]), 4)
    if "descriptors" in report:
        result["descriptors"] = report["descriptors"]
    trials = report.get("per_trial", [])
    if trials:
        result["live"] = live_figures(report, trials)
    if "any_point" in report:
        keys = ("visible", "found_rate", "within_10mm", "median_mm", "within_10px", "median_px", "skipped")
        result["any_point"] = {k: report["any_point"][k] for k in keys if k in report["any_point"]}
        pose = node_object_pose(report["any_point"])
        if pose:
            keys = ("trials", "refused", "within_tolerance", "median_mm", "median_deg", "p90_mm", "p90_deg")
            # Scored against the true motion without the declared symmetry: judged on the others only.
            declared = report.get("symmetry", entry.get("symmetry", "none")) != "none"
            result["object_pose"] = {**{k: pose[k] for k in keys}, "symmetry_declared": declared}
            aware = node_object_pose(report["any_point"], symmetry_aware=True)
            if aware:
                result["object_pose"]["symmetry_aware"] = {k: aware[k] for k in keys}
    causes = trial_failures(trials)
    if capture and capture.get("unreachable"):
        causes["capture_unreachable_views"] = int(capture["unreachable"])
    if result["failure"]:
        causes[f"{result['failure']['stage']}:{result['failure']['cause']}"] = 1
    result["failures_by_cause"] = dict(sorted(causes.items()))
    result["stage_seconds"] = report.get("stage_seconds", {})
    if "sizes" in report:
        result["sizes"] = report["sizes"]
    return result


def live_figures(report: dict, trials: list[dict]) -> dict:
    """The live trials' figures: the demo's summary when it finished them, else from the trials it
    left (the same definitions: not found or hidden counts as a miss)."""
    figures = summarize_trials(trials)
    for key in figures:
        if key in report and key != "trials":
            figures[key] = report[key]
    return figures


def summarize(results: list[dict]) -> dict:
    """Across objects: how many finished, which failed where, medians of the main figures over the
    objects that have them, and every failure cause counted."""

    def median(values) -> float | None:
        values = [v for v in values if v is not None]
        return round(float(np.median(values)), 4) if values else None

    causes: dict[str, int] = {}
    for r in results:
        for cause, n in r.get("failures_by_cause", {}).items():
            key = cause.split(":", 1)[1] if ":" in cause else cause
            causes[key] = causes.get(key, 0) + n
    live = [r["live"] for r in results if "live" in r]
    poses = {r["name"]: r["object_pose"] for r in results if "object_pose" in r}
    judged = {name: p["within_tolerance"] for name, p in poses.items() if not p["symmetry_declared"]}
    return {
        "objects": len(results),
        "completed": sum(r["status"] == "ok" for r in results),
        "failed": {r["name"]: r["failure"] for r in results if r["status"] != "ok"},
        "median_heldout_psnr_db": median(r.get("heldout_psnr_db") for r in results),
        "median_descriptor_auc_1_100": median(r.get("descriptors", {}).get("auc_1_100") for r in results),
        "median_keypoint_within_10px": median(x.get("keypoint_within_10px") for x in live),
        "median_keypoint_median_mm": median(x.get("keypoint_median_mm") for x in live),
        "median_grasp_success_rate": median(x.get("grasp_success_rate") for x in live),
        "trials": sum(x["trials"] for x in live),
        "grasps_lifted": sum(x["grasps_lifted"] for x in live),
        "object_pose_within_tolerance_without_symmetry": judged,
        "object_pose_worst_without_symmetry": min((v for v in judged.values() if v is not None), default=None),
        "failures_by_cause": dict(sorted(causes.items())),
    }


# ---- contact sheet --------------------------------------------------------------------------


def object_pictures(dataset_dir: Path) -> dict[str, Path | None]:
    """The pictures the demo left for one object: a capture frame, a held-out NeRF render (target |
    render | depth, of which the middle is used), the first live trial's descriptor colours and image."""

    def first(*candidates: Path) -> Path | None:
        return next((p for p in candidates if p.is_file()), None)

    demo = dataset_dir / "demo"
    return {
        "capture": first(dataset_dir / "images" / "frame_00000.png"),
        "nerf": first(*sorted((dataset_dir / "nerf" / "renders").glob("heldout_*.png"))),
        "descriptors": first(*sorted(demo.glob("live_trial_*_descriptors.png"))),
        "live": first(*sorted(p for p in demo.glob("live_trial_*.png") if not p.stem.endswith("_descriptors"))),
    }


def _tile(path: Path | None, what: str, width: int) -> np.ndarray:
    """One picture at TILE_HEIGHT, padded to ``width`` (BGR); a grey tile saying so when missing."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path is not None else None
    if image is None:
        tile = np.full((TILE_HEIGHT, width, 3), 90, np.uint8)
        cv2.putText(tile, f"no {what}", (10, TILE_HEIGHT // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (230, 230, 230), 1)
        return tile
    if what == "NeRF render" and image.shape[1] == 3 * (image.shape[1] // 3):
        third = image.shape[1] // 3
        image = image[:, third : 2 * third]
    scale = min(TILE_HEIGHT / image.shape[0], width / image.shape[1])
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    tile = np.zeros((TILE_HEIGHT, width, 3), np.uint8)
    top, left = (TILE_HEIGHT - image.shape[0]) // 2, (width - image.shape[1]) // 2
    tile[top : top + image.shape[0], left : left + image.shape[1]] = image
    return tile


def _label(result: dict) -> np.ndarray:
    """The row's first column: the object's name, kind and main figures."""

    def fmt(value, pattern: str) -> str:
        return "n/a" if value is None else pattern.format(value)

    live = result.get("live", {})
    views = result.get("views", {})
    lines = [
        result["name"],
        result["kind"][:40],
        f"views {fmt(views.get('reached'), '{}')}/{fmt(views.get('requested'), '{}')}  "
        f"PSNR {fmt(result.get('heldout_psnr_db'), '{:.1f}')} dB",
        f"AUC {fmt(result.get('descriptors', {}).get('auc_1_100'), '{:.3f}')}  "
        f"kp {fmt(live.get('keypoint_median_px'), '{:.1f}')} px {fmt(live.get('keypoint_median_mm'), '{:.1f}')} mm",
        f"lifted {fmt(live.get('grasps_lifted'), '{}')}/{fmt(live.get('trials'), '{}')}  any-point "
        f"{fmt(result.get('any_point', {}).get('median_mm'), '{:.1f}')} mm",
        f"pose {fmt(result.get('object_pose', {}).get('median_mm'), '{:.1f}')} mm "
        f"{fmt(result.get('object_pose', {}).get('median_deg'), '{:.1f}')} deg",
    ]
    if result.get("failure"):
        failure = result["failure"]
        lines.append(f"FAILED {failure['stage']}: {failure['cause']}")
    tile = np.full((TILE_HEIGHT, LABEL_WIDTH, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        colour = (0, 0, 200) if line.startswith("FAILED") else (20, 20, 20)
        cv2.putText(tile, line, (8, 22 + 24 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return tile


def contact_sheet(rows: list[tuple[dict, dict[str, Path | None]]], path: Path) -> Path:
    """One row per object: its label, a capture frame, a NeRF render, the descriptor colours and a
    live trial image (columns titled in the first row); written as a PNG to ``path``."""
    columns = (("capture", "capture frame"), ("nerf", "NeRF render"), ("descriptors", "descriptors"), ("live", "live"))
    width = TILE_HEIGHT * 4 // 3
    header = np.full((24, LABEL_WIDTH + width * len(columns), 3), 255, np.uint8)
    for i, (_, title) in enumerate(columns):
        cv2.putText(header, title, (LABEL_WIDTH + i * width + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    sheet = [header]
    for result, pictures in rows:
        tiles = [_label(result)] + [_tile(pictures.get(key), title, width) for key, title in columns]
        sheet.append(np.concatenate(tiles, axis=1))
    image = np.concatenate(sheet, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    if not cv2.imwrite(str(tmp), image):
        raise OSError(f"cannot write {path}")
    tmp.replace(path)
    return path
