"""benchmarks/gpu_suite.py at its tiny CPU size, as on the GPU machine: prepared here, then run
without the simulator and without ROS (their imports fail), every section in its own process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
ABSENT_ON_THE_DEVICE = ("pybullet", "pybullet_data", "rclpy", "open3d", "pycolmap")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_suite") / "prepared"
    subprocess.run(
        [sys.executable, str(SUITE), "prepare", "--out-dir", str(folder), "--tiny", "--no-wheels"],
        check=True,
        timeout=120,
    )
    return folder


@pytest.fixture
def device_env(tmp_path):
    """The environment with the simulator's and ROS's modules made unimportable."""
    stubs = tmp_path / "absent"
    stubs.mkdir()
    for name in ABSENT_ON_THE_DEVICE:
        (stubs / f"{name}.py").write_text(f"raise ImportError('{name} is not on the device machine')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(stubs), os.environ.get("PYTHONPATH", "")])}


def run_suite(dataset: Path, out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SUITE), "--tiny", "--dataset", str(dataset), "--out", str(out), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)


def test_every_section_succeeds_without_simulator_or_ros(prepared, device_env, tmp_path):
    out = tmp_path / "suite.json"
    done = run_suite(prepared, out, device_env)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["tiny"] is True
    assert {"device", "name", "torch", "cuda", "python"} <= set(result["device"])
    assert result["total_seconds"] > 0
    sections = result["sections"]
    assert list(sections) == ["nerf", "live", "descriptor_quality"]
    for name, section in sections.items():
        assert section["status"] == "ok", (name, section.get("error"), section.get("log_tail"))
        assert 0 < section["seconds"] <= section["timeout_s"]

    nerf = sections["nerf"]["result"]
    assert nerf["resolution"] == [64, 48] and nerf["target_psnr_db"] == 30.0
    assert nerf["psnr_over_time"] and nerf["heldout_psnr_at_budget"] > 0
    assert "seconds_to_target" in nerf and "target_met" in nerf

    live = sections["live"]["result"]
    assert [(r["half_precision"], r["compile_mode"]) for r in live["rows"]] == [(False, "none"), (True, "none")]
    for row in live["rows"]:
        assert row["fps"] > 0 and 0 < row["latency_p50_ms"] <= row["latency_p95_ms"] and row["calls"] >= 3
    assert live["best"] in live["rows"] and live["target_met"] is None  # the target is for a GPU at 640x480
    assert live["node"]["measured"] is False and "needs ROS 2" in live["node"]["reason"]

    quality = sections["descriptor_quality"]["result"]
    assert quality["methods_left_out"] == ["classical_baseline"]
    assert set(quality["methods"]) == {"gt_depth", "nerf_depth_map", "nerf_density_field"}
    for metrics in quality["methods"].values():
        assert {"aepe_px", "pck3", "pck5", "auc_1_100", "median_px"} == set(metrics)
    assert quality["checks"]["learned_rows_beat_classical_pck3"] is None
    assert isinstance(quality["checks"]["density_field_pck3_ge_90pct_of_gt"], bool)


def test_a_failing_section_is_recorded_and_the_next_still_runs(prepared, device_env, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken)
    (broken / "nerf" / "transforms.json").write_text("{not json")
    out = tmp_path / "suite.json"
    done = run_suite(broken, out, device_env, "--sections", "nerf,live")
    assert done.returncode == 1, done.stdout + done.stderr
    sections = json.loads(out.read_text())["sections"]
    assert sections["nerf"]["status"] == "error" and "transforms.json" in sections["nerf"]["error"]
    assert "Traceback" in sections["nerf"]["log_tail"] and "result" not in sections["nerf"]
    assert sections["live"]["status"] == "ok" and sections["live"]["result"]["rows"]


def test_a_section_past_its_time_limit_is_stopped_and_recorded(prepared, device_env, tmp_path):
    out = tmp_path / "suite.json"
    done = run_suite(prepared, out, device_env, "--sections", "live", "--section-timeout", "live=1")
    assert done.returncode == 1, done.stdout + done.stderr
    live = json.loads(out.read_text())["sections"]["live"]
    assert live["status"] == "timeout" and live["error"] == "timed out after 1 s" and live["timeout_s"] == 1
    assert live["seconds"] < 30 and "result" not in live


def test_a_folder_prepared_for_the_other_size_is_one_error_line(prepared, tmp_path):
    done = subprocess.run(
        [sys.executable, str(SUITE), "--dataset", str(prepared), "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: ") and "--tiny" in done.stderr, done.stderr
    assert not (tmp_path / "x.json").exists()
