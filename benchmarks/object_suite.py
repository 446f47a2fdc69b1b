"""The whole chain on a suite of objects: one `nerf-descriptor demo` run per object.

Each object is one demo (capture, NeRF, descriptors and their held-out evaluation, live keypoint
trials with grasp and lift, any-point keypoints) in its own work folder, started as a subprocess
with the same settings for every object; the suite collects the demo reports. Nothing of the
simulator's ground truth reaches the chain: the demo uses it only to score (true grasp point,
held-out correspondences, lift height).

Objects (``--objects`` picks by name; ``--list`` prints them): pybullet_data models of different
kinds (duck, mug with a handle, teddy, a torus, a flat block, three random_urdfs at fixed indices),
three procedurally generated thin objects (fork, whisk, basket: ``thin:KIND:SEED``), one cluttered
scene (the duck among static distractors, capture and live) and one lighting change (the duck
captured under the default light, its live trials under another light's direction and colour).

    ./env.sh python benchmarks/object_suite.py --out FILE [--quick] [--work-dir DIR] [--objects ...]

Per object: views reached of those requested, NeRF held-out PSNR, the held-out descriptor
metrics, the grasp keypoint's error in px and mm over the live trials, the any-point keypoint
figures, grasps lifted, and failures by cause (unreachable capture views and live views, hidden
grasp point, no match, each pick failure by its reason, and a stage that did not finish with its
one-line cause: the suite then goes on with the next object). Writes the JSON and a contact sheet
(``<out>.png``: one row per object, a capture frame, a NeRF render, the descriptor colours and a
live trial image, from the pictures the demo leaves in its folder).

Resumes: an object whose ``<work>/<name>/result.json`` exists is not run again (delete it to rerun).
``--quick`` runs three objects (the duck, the thin fork, the cluttered duck) at small sizes with
3 trials each, aiming at 10 minutes on 2 idle cores; the default is the demo's own sizes for the
device (CPU: 64 views at 320x240) with 20 trials per object, hours on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from object_suite_report import (  # noqa: E402
    RESULT_NAME,
    contact_sheet,
    object_pictures,
    object_result,
    read_json,
    summarize,
)

TORUS_MESH = "torus/torus_textured.obj"  # pybullet_data; modelled y up, about 1.5 across
TORUS_SCALE = 0.06  # 9 cm across, 1.5 cm thick
DISTRACTORS = "cube_small.urdf,random_urdfs/042/042.urdf,objects/mug.urdf"
LIVE_LIGHT = {"light_direction": [-0.6, 0.5, 0.6], "light_color": [1.0, 0.75, 0.5]}  # capture: default light

OBJECTS = [
    {"name": "duck", "kind": "pybullet_data duck, textured, rounded", "object": "duck_vhacd.urdf"},
    # Plain red: its body looks the same turned about its axis, so the any-point scores declare it.
    {"name": "mug", "kind": "mug with a handle", "object": "objects/mug.urdf", "symmetry": "z"},
    {"name": "teddy", "kind": "teddy bear, small and untextured", "object": "teddy_vhacd.urdf"},
    {"name": "torus", "kind": "torus lying flat", "object": "torus"},
    {"name": "flat_block", "kind": "flat block (jenga brick, 15x5x3 cm)", "object": "jenga/jenga.urdf"},
    {"name": "random_017", "kind": "random_urdfs 017, blocky", "object": "random_urdfs/017/017.urdf"},
    {"name": "random_123", "kind": "random_urdfs 123, lumpy", "object": "random_urdfs/123/123.urdf"},
    {"name": "random_500", "kind": "random_urdfs 500, cross-shaped", "object": "random_urdfs/500/500.urdf"},
    {"name": "fork", "kind": "thin: generated fork", "object": "thin:fork:0"},
    {"name": "whisk", "kind": "thin: generated whisk", "object": "thin:whisk:0"},
    {"name": "basket", "kind": "thin: generated wire basket", "object": "thin:basket:0"},
    {
        "name": "duck_clutter",
        "kind": "clutter: duck among 3 static distractors",
        "object": "duck_vhacd.urdf",
        "sim_params": {"distractors": DISTRACTORS, "distractor_seed": 0},
    },
    {
        "name": "duck_light",
        "kind": "lighting change: live light turned and warmer",
        "object": "duck_vhacd.urdf",
        "live_sim_params": LIVE_LIGHT,
    },
]
QUICK_OBJECTS = ["duck", "fork", "duck_clutter"]
# Every object gets the same demo settings. Full: the demo's own sizes for the device.
FULL = {"trials": 20}
QUICK = {"trials": 3, "views": 24, "width": 160, "height": 120, "nerf_seconds": 30.0, "descriptor_iterations": 150}
LIMITATIONS = [
    "any-point keypoints (the demo's in-process simulator, rebuilt from ground_truth.json) see neither the "
    "distractors nor the live light: for duck_clutter and duck_light they measure the plain scene",
    "distractors are static (fixed bodies): a pick may touch them but never moves them",
    "the mug and the torus collide as V-HACD parts of their visual meshes (sim/collision_fidelity.py), "
    "a little fatter than the meshes",
]


def torus_urdf(out_dir: Path) -> Path:
    """A URDF for pybullet_data's torus mesh, scaled and laid flat (turned +90 deg about x)."""
    import pybullet_data

    mesh = Path(pybullet_data.getDataPath()) / TORUS_MESH
    scale = " ".join([str(TORUS_SCALE)] * 3)
    geometry = (
        f'<origin rpy="1.5707963 0 0" xyz="0 0 0"/><geometry><mesh filename="{mesh}" scale="{scale}"/></geometry>'
    )
    text = (
        '<?xml version="1.0"?>\n<robot name="torus">\n  <link name="torus">\n'
        '    <inertial><origin xyz="0 0 0"/><mass value="0.1"/>'
        '<inertia ixx="1e-4" ixy="0" ixz="0" iyy="1e-4" iyz="0" izz="1e-4"/></inertial>\n'
        f"    <visual>{geometry}</visual>\n    <collision>{geometry}</collision>\n  </link>\n</robot>\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "torus.urdf"
    path.write_text(text)
    return path


def demo_command(entry: dict, folder: Path, settings: dict, args) -> list[str]:
    """The demo's argument list for one object (never a shell string)."""
    executable = shutil.which("nerf-descriptor")
    if executable is None:
        raise SystemExit("nerf-descriptor is not on PATH: run this inside ./env.sh")
    source = str(torus_urdf(Path(args.work_dir) / "objects")) if entry["object"] == "torus" else entry["object"]
    cmd = [executable, "demo", "--object", source, "--name", entry["name"], "--device", args.device]
    cmd += ["--data-root", str(folder / "data"), "--log-dir", str(folder / "logs")]
    cmd += ["--out", str(folder / "report.json"), "--progress-out", str(folder / "progress.json")]
    cmd += ["--trial-seed", str(args.trial_seed), "--symmetry", entry.get("symmetry", "auto")]
    for key, value in settings.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    for option, params in (
        ("--sim-param", entry.get("sim_params")),
        ("--live-sim-param", entry.get("live_sim_params")),
    ):
        for name, value in (params or {}).items():
            cmd += [option, f"{name}={json.dumps(value)}"]
    return cmd


def run_object(entry: dict, index: int, total: int, settings: dict, args) -> dict | None:
    """One demo, its output streamed (progress lines shown, everything in demo.log); its result,
    or None when the suite was interrupted (nothing is recorded, so a rerun starts it again)."""
    folder = Path(args.work_dir) / entry["name"]
    shutil.rmtree(folder / "data" / entry["name"], ignore_errors=True)  # a run cut short
    for stale in ("report.json", "progress.json"):
        (folder / stale).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = demo_command(entry, folder, settings, args)
    tag = f"[suite {index}/{total} {entry['name']}]"
    print(f"{tag} {entry['kind']}: {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    output: list[str] = []
    lines: queue.Queue = queue.Queue()
    timed_out = False
    with open(folder / "demo.log", "w") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # our Ctrl-C is forwarded, once, as the demo's own
            env={**os.environ, **args.demo_env},
        )
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
        try:
            while True:
                try:
                    line = lines.get(timeout=5.0)
                except queue.Empty:
                    line = ""
                if line is None:
                    break
                if line:
                    log.write(line)
                    log.flush()
                    output.append(line)
                    if not line.startswith("[demo] view ") and line.strip():
                        print(f"{tag} {line.rstrip()}", flush=True)
                if time.monotonic() - started > args.object_timeout_s:
                    _stop(proc)
                    timed_out = True
                    output.append(f"error: suite timeout: the demo ran past {args.object_timeout_s:.0f} s\n")
                    break
            proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            return None
    if proc.returncode in (130, -signal.SIGINT) and not timed_out:
        return None  # interrupted from outside
    exit_code = 124 if timed_out else proc.returncode
    report = read_json(folder / "report.json") if exit_code == 0 else read_json(folder / "progress.json")
    result = object_result(entry, report, exit_code, "".join(output[-40:]), time.monotonic() - started)
    result["work_dir"] = str(folder)
    (folder / RESULT_NAME).write_text(json.dumps(result, indent=1))
    live = result.get("live", {})
    print(
        f"{tag} {result['status']} in {result['wall_seconds']:.0f} s: views "
        f"{result.get('views', {}).get('reached')}/{result.get('views', {}).get('requested')}, PSNR "
        f"{result.get('heldout_psnr_db')}, keypoint median {live.get('keypoint_median_px')} px "
        f"{live.get('keypoint_median_mm')} mm, lifted {live.get('grasps_lifted')}/{live.get('trials')}"
        + (f"; FAILED at {result['failure']['stage']}: {result['failure']['message']}" if result["failure"] else ""),
        flush=True,
    )
    return result


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT (the demo stops its nodes on the way out), then SIGKILL to its group after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def write_outputs(results: list[dict], settings: dict, args, wall_s: float, load_before) -> dict:
    sheet = Path(args.out).with_suffix(".png")
    rows = [(r, object_pictures(Path(r["work_dir"]) / "data" / r["name"])) for r in results]
    contact_sheet(rows, sheet)
    suite = {
        "benchmark": "object_suite",
        "mode": "quick" if args.quick else "full",
        "settings": {**settings, "device": args.device, "trial_seed": args.trial_seed},
        "settings_note": "sizes not given are the demo's own for the device (see each object's sizes)",
        "summary": summarize(results),
        "objects": results,
        "limitations": LIMITATIONS,
        "contact_sheet": str(sheet),
        "work_dir": str(Path(args.work_dir).resolve()),
        "wall_seconds_this_invocation": round(wall_s, 1),
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_name(Path(args.out).name + ".tmp")
    tmp.write_text(json.dumps(suite, indent=1))
    tmp.replace(args.out)
    return suite


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="the suite's JSON (the contact sheet goes beside it, .png)")
    parser.add_argument("--quick", action="store_true", help="three objects at small sizes, 3 trials each")
    parser.add_argument("--work-dir", help="one folder per object (default: data/object_suite[_quick])")
    parser.add_argument("--objects", nargs="+", help="names to run (default: all, or the quick three)")
    parser.add_argument("--trials", type=int, help="live trials per object (default: 20, quick 3)")
    parser.add_argument("--trial-seed", type=int, default=1000, help="placement seed of every object's first trial")
    parser.add_argument("--device", default="auto", help="passed to every demo (default: %(default)s)")
    parser.add_argument("--object-timeout-s", type=float, default=4 * 3600.0, help="one demo's limit (default 4 h)")
    parser.add_argument("--list", action="store_true", help="print the objects and exit")
    args = parser.parse_args(argv)
    if args.list:
        for entry in OBJECTS:
            print(f"{entry['name']:14s} {entry['object']:28s} {entry['kind']}")
        return 0
    if not args.out:
        parser.error("--out is required")
    names = args.objects or (QUICK_OBJECTS if args.quick else [e["name"] for e in OBJECTS])
    unknown = sorted(set(names) - {e["name"] for e in OBJECTS})
    if unknown:
        parser.error(f"unknown objects {unknown}; --list shows them")
    entries = [e for e in OBJECTS if e["name"] in names]
    settings = dict(QUICK if args.quick else FULL)
    if args.trials is not None:
        settings["trials"] = args.trials
    args.work_dir = str(Path(args.work_dir or f"data/object_suite{'_quick' if args.quick else ''}").resolve())
    # Demo traffic stays on this machine, on a domain of its own (tests use 20-100).
    args.demo_env = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"),
        "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID", str(1 + os.getpid() % 19)),
        "PYTHONUNBUFFERED": "1",
    }

    started, load_before = time.monotonic(), os.getloadavg()
    results: list[dict] = []
    for index, entry in enumerate(entries, 1):
        done = read_json(Path(args.work_dir) / entry["name"] / RESULT_NAME)
        if done is not None:
            print(f"[suite {index}/{len(entries)} {entry['name']}] done before ({done['status']}): kept", flush=True)
            results.append(done)
            continue
        result = run_object(entry, index, len(entries), settings, args)
        if result is None:
            print(f"[suite] interrupted during {entry['name']}; run again to resume", flush=True)
            write_outputs(results, settings, args, time.monotonic() - started, load_before)
            return 130
        results.append(result)
        write_outputs(results, settings, args, time.monotonic() - started, load_before)
    suite = write_outputs(results, settings, args, time.monotonic() - started, load_before)
    s = suite["summary"]
    print(
        f"[suite] {s['completed']}/{s['objects']} objects finished, {s['grasps_lifted']}/{s['trials']} grasps lifted; "
        f"failures by cause {s['failures_by_cause']}; {time.monotonic() - started:.0f} s; written {args.out} and "
        f"{suite['contact_sheet']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
