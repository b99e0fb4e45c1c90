"""Opt-in: the shipped API workflows (``workflows/api/``) that need no downloads run in a real ComfyUI, through its
HTTP API, and its template browser lists exactly the UI workflows, each with its thumbnail.

Skipped unless ``MOGE4D_COMFYUI_DIR`` names a ComfyUI checkout (v0.21 or later). ``MOGE4D_COMFYUI_PYTHON`` is the
interpreter to start it with (default: this one); it needs ComfyUI's requirements and this pack's. The test builds
a throw-away base directory (``--base-directory``: ``custom_nodes/`` holding a link to this pack, ``input/`` with
the example scene, empty ``models/`` and ``output/``), starts ``main.py --cpu`` on a free loopback port, posts each
workflow to ``/prompt``, polls ``/history`` and checks that it succeeded and wrote the files its save nodes name.
Nothing outside the temporary folder is touched, and the server is stopped at the end.

    MOGE4D_COMFYUI_DIR=~/ComfyUI MOGE4D_COMFYUI_PYTHON=~/ComfyUI/venv/bin/python python -m pytest tests/test_real_comfyui.py -s
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFY = os.environ.get("MOGE4D_COMFYUI_DIR")
PYTHON = os.environ.get("MOGE4D_COMFYUI_PYTHON", sys.executable)

pytestmark = pytest.mark.skipif(not COMFY, reason="set MOGE4D_COMFYUI_DIR to a ComfyUI checkout to run these")

# API workflows that run on a CPU with no model files, and the input files each needs from example_assets/.
NO_DOWNLOAD = {
    "moge4d_nano_cpu_api.json": [],                # the built-in nano model and its demo input, no files
    # the nano ViSM + pixel VAE through ComfyUI's own UNETLoader / VAELoader / KSampler / VAEDecode
    "moge4d_nano_image_to_4d_video_native_api.json": [],
    "moge4d_nano_native_sampler_api.json": [],     # ComfyUI's KSamplerSelect samplers drive the trajectory stage
    "moge4d_4d_preview_api.json": [],
    "moge4d_render_demo_scene_api.json": [],
    "moge4d_render_trajectories_api.json": [],     # its scene is the Load Trajectories node's pack example
}
# more runs of a workflow with one widget changed: (workflow, node id, input, values)
VARIANTS = [("moge4d_nano_native_sampler_api.json", "4", "sampler_name", ["dpmpp_2m", "uni_pc"])]
RUNS = [(name, None) for name in sorted(NO_DOWNLOAD)] + [
    (name, (nid, key, value)) for name, nid, key, values in VARIANTS for value in values]
# what a save node writes: class_type -> file extension
WRITES = {"SaveVideo": ".mp4", "MoGe4DSavePLYSequence": ".ply"}
STARTUP_S, RUN_S = 240, 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:           # ComfyUI answers 400 with the validation errors as JSON
        return json.loads(exc.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    for sub in ("custom_nodes", "input", "output", "models", "user", "temp"):
        (base / sub).mkdir()
    (base / "custom_nodes" / "ComfyUI-MoGe4D").symlink_to(ROOT, target_is_directory=True)
    for files in NO_DOWNLOAD.values():
        for name in files:
            shutil.copy(ROOT / "example_assets" / name, base / "input" / name)
    port = _free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base), "--disable-auto-launch"],
                            cwd=COMFY, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode}: {(base / 'server.log').read_text()[-3000:]}")
            try:
                info = _get(f"{url}/object_info/MoGe4DRender")
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"ComfyUI did not answer in {STARTUP_S} s: {(base / 'server.log').read_text()[-3000:]}")
                time.sleep(1)
        assert "MoGe4DRender" in info, "the pack's nodes did not register"
        yield url, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.parametrize("name,change", RUNS, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v or [])))
def test_workflow_runs_and_writes_its_files(server, name, change):
    url, base = server
    prompt = json.loads((ROOT / "workflows" / "api" / name).read_text())
    tag = ""
    if change is not None:                       # a variant: one widget changed, its own output prefixes
        nid, key, value = change
        prompt[nid]["inputs"][key] = value
        tag = f"_{value}"
    saves = {}
    for node in prompt.values():
        prefix = node["inputs"].get("filename_prefix")
        if isinstance(prefix, str):
            node["inputs"]["filename_prefix"] = prefix = prefix + tag
            saves[prefix] = WRITES.get(node["class_type"])
    t0 = time.perf_counter()
    answer = _post(f"{url}/prompt", {"prompt": prompt, "client_id": "moge4d-test"})
    assert "prompt_id" in answer, f"{name} was refused: {json.dumps(answer)[:3000]}"
    pid = answer["prompt_id"]
    deadline = time.time() + RUN_S
    while True:
        hist = _get(f"{url}/history/{pid}").get(pid)
        if hist and hist.get("status", {}).get("completed") is not None and (
                hist["status"]["completed"] or hist["status"].get("status_str") == "error"):
            break
        assert time.time() < deadline, f"{name} did not finish in {RUN_S} s"
        time.sleep(0.5)
    seconds = time.perf_counter() - t0
    status = hist["status"]
    assert status.get("status_str") == "success", f"{name}: {json.dumps(status.get('messages'))[:3000]}"
    written = sorted(p.relative_to(base / "output").as_posix() for p in (base / "output").rglob("*") if p.is_file())
    for prefix, ext in saves.items():
        # ComfyUI's counter: <prefix>_00001_.mp4, <prefix>_00001.glb, <prefix>_00001/frame_00000.ply
        mine = [w for w in written if re.match(re.escape(prefix) + r"_\d{5}(_?\.\w+$|/)", w)]
        assert mine, f"{name}: nothing written under {prefix}: {written}"
        if ext is not None:
            assert all(w.endswith(ext) for w in mine) and all((base / "output" / w).stat().st_size > 0 for w in mine)
    print(f"\n{name}{tag}: {seconds:.1f} s, {sum(len([w for w in written if w.startswith(p)]) for p in saves)} "
          f"files written")


def test_template_browser_lists_ui_workflows_with_thumbnails(server):
    """ComfyUI lists ``workflows/*.json`` (top level only) as the pack's templates: the UI workflows, not their API
    twins in ``workflows/api/``, and serves the ``.jpg`` beside each as its thumbnail."""
    url, _ = server
    listed = _get(f"{url}/workflow_templates").get("ComfyUI-MoGe4D")
    ui = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    assert listed is not None and sorted(listed) == ui, listed
    for name in ui:
        with urllib.request.urlopen(f"{url}/api/workflow_templates/ComfyUI-MoGe4D/{name}.jpg", timeout=10) as r:
            assert r.headers.get_content_type() == "image/jpeg" and r.read(3) == b"\xff\xd8\xff", name


def _ply_points(path: Path):
    """xyz (N,3) of a PLY written by MoGe4D Save PLY Sequence, read with plyfile."""
    import numpy as np
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"]
    return np.stack([v["x"], v["y"], v["z"]], axis=1)


def test_comfyuis_euler_sampler_reproduces_the_built_in_euler(server):
    """``moge4d_nano_native_sampler`` (ComfyUI's ``euler`` from KSamplerSelect + MoGe4D Flow Scheduler ``normal``)
    writes the same trajectories as ``moge4d_nano_cpu`` (the node's own Euler, same seed, steps and shift)."""
    _, base = server
    out = base / "output" / "moge4d"
    own, native = out / "nano_scene_00001", out / "nano_native_sampler_scene_00001"
    if not (own.is_dir() and native.is_dir()):
        pytest.skip("runs after the workflow runs of this module")
    frames = sorted(own.glob("frame_*.ply"))
    assert len(frames) == 17 and [p.name for p in frames] == sorted(p.name for p in native.glob("frame_*.ply"))
    first = _ply_points(frames[0])
    moved = float(abs(_ply_points(frames[-1]) - first).max())
    gap = max(float(abs(_ply_points(p) - _ply_points(native / p.name)).max()) for p in frames)
    print(f"\nnative euler vs built-in euler: max point gap {gap:.2e} m (largest motion {moved:.2f} m)")
    assert moved > 0.1 and gap < 1e-4 * moved
