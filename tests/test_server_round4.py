"""The server as strict as the Python API and as early as it can be: the Request's own checks and
messages for every field (raw HTTP, since webuiapi sends well-typed values), photos decoded under a
memory budget and their faces found on arrival, LoRA tags from ``--lora-dir`` through the real
webuiapi client, a pickled identity member named, and shutdown and upload-cap arguments."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import requests

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webuiapi = pytest.importorskip("webuiapi")

from dynamicid_rt import Request, RequestError  # noqa: E402
from dynamicid_rt.cli import main as cli_main  # noqa: E402
from server_helpers import LOOPBACK, LiveServer, b64  # noqa: E402

SMALL = dict(width=256, height=256, steps=2)


@pytest.fixture(scope="module")
def lora_dir(tiny_bundle, tmp_path_factory):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from lora_files import write_kohya_ldm

    folder = tmp_path_factory.mktemp("Lora")
    unet = UNet2DConditionModel.from_pretrained(tiny_bundle / "base" / "unet")
    text = CLIPTextModel.from_pretrained(tiny_bundle / "base" / "text_encoder")
    (folder / "styles").mkdir()
    write_kohya_ldm(folder / "styles" / "ink.safetensors", unet, text, seed=11)
    return folder


@pytest.fixture(scope="module")
def served(tiny_pipeline, lora_dir):
    from dynamicid_rt.server.app import create_app
    from dynamicid_rt.server.service import Service

    service = Service(tiny_pipeline, lora_dir=lora_dir, decode_budget=64 * 2**20)
    server = LiveServer(create_app(service))
    yield server, service
    server.stop()


def _post(server, body: dict) -> requests.Response:
    return requests.post(f"{server.url}/sdapi/v1/txt2img", data=json.dumps(body), headers={"Content-Type": "application/json"})


def _python_error(**fields) -> str:
    with pytest.raises(RequestError) as info:
        Request(**fields)
    return str(info.value)


@pytest.mark.parametrize(("body", "python"), [
    ({"steps": True}, {"steps": True}),
    ({"seed": True}, {"seed": True}),
    ({"width": "256"}, {"width": "256"}),
    ({"steps": "2"}, {"steps": "2"}),
    ({"steps": 2.0}, {"steps": 2.0}),
    ({"cfg_scale": "5"}, {"guidance": "5"}),
    ({"cfg_scale": False}, {"guidance": False}),
    ({"batch_size": True}, {"batch": True}),
    ({"prompt": 5}, {"prompt": 5}),
    ({"negative_prompt": ["x"]}, {"negative_prompt": ["x"]}),
])
def test_fields_get_the_python_apis_own_refusal(served, monkeypatch, body, python):
    server, service = served
    monkeypatch.setattr(service.queue, "submit", lambda *a, **k: pytest.fail("a bad request reached the queue"))
    response = _post(server, {"prompt": "x", **SMALL, **body})
    expected = _python_error(**{"prompt": "x", **SMALL, **python})
    assert response.status_code == 422 and response.json() == {"detail": expected}


def test_person_fields_are_judged_by_the_request(served, samples, monkeypatch):
    server, service = served
    monkeypatch.setattr(service.queue, "submit", lambda *a, **k: pytest.fail("a bad request reached the queue"))
    photo = b64(samples / "person_a.png")
    for person, words in (({"image": photo, "id_scale": True}, "id_scale=True"),
                          ({"image": photo, "id_scale": "1"}, "id_scale='1'"),
                          ({"image": photo, "box": [True, 0, 1, 1]}, "box 0"),
                          ({"image": photo, "box": "0,0,1,1"}, "box 0"),
                          ({"image": photo, "face_prompt": 5}, "face_prompt=5")):
        response = _post(server, {"prompt": "x", **SMALL, "alwayson_scripts": {"dynamicid": {"args": [person]}}})
        assert response.status_code == 422 and words in response.json()["detail"], (person, response.text)


def test_a_photo_without_a_face_is_refused_on_arrival_naming_the_person(served, samples):
    server, service = served
    api = webuiapi.WebUIApi(host=LOOPBACK, port=server.port)
    long = threading.Thread(target=lambda: api.txt2img(prompt="x", width=256, height=256, steps=400, seed=3))
    long.start()
    deadline = time.monotonic() + 60
    while api.get_progress()["state"]["sampling_step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    people = [{"image": b64(samples / "person_a.png"), "name": "alice"}, {"image": b64(samples / "no_face.png"), "name": "bob"}]
    response = _post(server, {"prompt": "x", **SMALL, "alwayson_scripts": {"dynamicid": {"args": people}}})
    running = api.get_progress()["queue"]["running"]
    api.interrupt()
    long.join(60)
    assert response.status_code == 422
    assert "no face found in dynamicid args[1].image ('bob')" in response.json()["detail"]
    assert running == 1  # answered while the other job still ran, not when it left the queue


def test_a_pickled_identity_member_is_called_a_pickle(served):
    server, _ = served
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        member = io.BytesIO()
        np.save(member, np.array([object()], dtype=object), allow_pickle=True)
        archive.writestr("tokens.npy", member.getvalue())
    person = {"identity": base64.b64encode(buffer.getvalue()).decode()}
    response = _post(server, {"prompt": "x", **SMALL, "alwayson_scripts": {"dynamicid": {"args": [person]}}})
    assert response.status_code == 422 and "tokens.npy is a pickle" in response.json()["detail"]


def test_lora_tags_resolve_from_the_lora_folder(served, tiny_pipeline, lora_dir):
    server, _ = served
    api = webuiapi.WebUIApi(host=LOOPBACK, port=server.port)
    listed = requests.get(f"{server.url}/sdapi/v1/loras").json()
    assert listed == [{"name": "ink", "alias": "ink", "path": "styles/ink.safetensors", "metadata": {}}]
    result = api.txt2img(prompt="a house <lora:ink:0.8>", seed=4, sampler_name="Euler", cfg_scale=5, **SMALL)
    direct = tiny_pipeline.generate(Request("a house <lora:ink:0.8>", seed=4, sampler="euler", loras=[(lora_dir / "styles" / "ink.safetensors", 0.8)],
                                            **SMALL))
    plain = tiny_pipeline.generate(Request("a house", seed=4, sampler="euler", **SMALL))
    ours = np.asarray(result.image.convert("RGB"))
    assert np.array_equal(ours, np.asarray(direct.images[0])) and not np.array_equal(ours, np.asarray(plain.images[0]))
    assert "Lora hashes: \"ink: " in result.image.info["parameters"]
    for prompt, words in (("a house <lora:nope:1>", "no nope.safetensors is in the"),
                          ("a house <lora:ink:1_0>", "one plain number"),
                          ("a house <lora:ink:1e30>", "scale 1e+30 must be")):
        with pytest.raises(RuntimeError, match=f"422.*{re.escape(words)}"):
            api.txt2img(prompt=prompt, **SMALL)


def test_lora_tags_without_a_lora_folder_are_refused(tiny_pipeline):
    from dynamicid_rt.server.app import create_app
    from dynamicid_rt.server.service import Service

    server = LiveServer(create_app(Service(tiny_pipeline)))
    try:
        response = _post(server, {"prompt": "x <lora:ink:1>", **SMALL})
    finally:
        server.stop()
    assert response.status_code == 422 and "--lora-dir" in response.json()["detail"]


def _rgba16_png(side: int, seed: int) -> str:
    import cv2

    pixels = np.random.default_rng(seed).integers(0, 65535, (side, side, 4), dtype=np.uint16)
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return base64.b64encode(data.tobytes()).decode()


def test_concurrent_big_uploads_stay_within_the_decode_budget(served):
    """The budget of this server is 64 MiB of decoding at once; each 1000x1000 16-bit RGBA photo
    needs 39 MB of it (8 bytes of samples, 3 of RGB and 28 of compositing a pixel), so two sent at
    once are decoded one after the other, and a photo needing more than 64 MiB is refused from its
    header."""
    server, service = served
    service.decode_budget.peak = 0
    photos = [_rgba16_png(1000, seed) for seed in (1, 2)]
    answers = []

    def send(photo):
        answers.append(_post(server, {"prompt": "x", **SMALL, "alwayson_scripts": {"dynamicid": {"args": [{"image": photo}]}}}))

    threads = [threading.Thread(target=send, args=(p,)) for p in photos]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [a.status_code for a in answers] == [422, 422]  # decoded, then no face in random pixels
    assert all("no face found" in a.json()["detail"] for a in answers)
    assert 39_000_000 <= service.decode_budget.peak <= service.decode_budget.limit == 64 * 2**20
    response = _post(server, {"prompt": "x", **SMALL, "alwayson_scripts": {"dynamicid": {"args": [{"image": _rgba16_png(1400, 3)}]}}})
    assert response.status_code == 422 and "MiB to decode" in response.json()["detail"]


def test_max_upload_mb_must_be_a_finite_size(tiny_bundle, caplog):
    for value in ("inf", "1e309", "nan", "0"):
        caplog.clear()
        assert cli_main(["serve", "--models", str(tiny_bundle), "--port", "0", "--max-upload-mb", value]) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno >= 40]
        assert len(errors) == 1 and "--max-upload-mb" in errors[0] and "\n" not in errors[0]
        assert "Traceback" not in caplog.text


def test_sigterm_during_a_job_gives_a_503_with_a_line_and_exit_0(tiny_bundle, tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynamicid_rt", "serve", "--models", str(tiny_bundle), "--backend", "torch", "--device", "cpu",
         "--port", "0"], stderr=subprocess.PIPE, text=True, env=env,
    )
    lines, port, deadline = [], None, time.monotonic() + 180
    while port is None:
        line = proc.stderr.readline()
        assert (line or proc.poll() is None) and time.monotonic() < deadline, "".join(lines)
        lines.append(line)
        found = re.search(rf"serving on http://{re.escape(LOOPBACK)}:(\d+)", line)
        port = int(found.group(1)) if found else None
    box = {}
    try:
        client = threading.Thread(target=lambda: box.update(r=requests.post(
            f"http://{LOOPBACK}:{port}/sdapi/v1/txt2img",
            json={"prompt": "x", "width": 256, "height": 256, "steps": 1000, "sampler_name": "Euler"}, timeout=120)))
        client.start()
        api = webuiapi.WebUIApi(host=LOOPBACK, port=port)
        while api.get_progress()["state"]["sampling_step"] < 1:
            assert time.monotonic() < deadline and client.is_alive(), box
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        client.join(60)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    rest = proc.stderr.read()
    assert box["r"].status_code == 503 and "shutting down" in box["r"].json()["detail"]
    assert "Traceback" not in rest, rest[-3000:]


_RAY_SIGTERM = """
import os, signal, sys, threading
import ray
from ray import serve
from dynamicid_rt.cli import main
# Stand-ins for Ray's start and deployment (the real ones are tests/test_server_ray.py, slow):
# what is checked is serve --ray's own handling of SIGTERM.
ray.init = lambda *a, **k: None
ray.shutdown = lambda *a, **k: None
ray.cluster_resources = lambda: {"CPU": 2}
serve.start = serve.shutdown = lambda *a, **k: None
serve.run = lambda *a, **k: threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
sys.exit(main(["serve", "--ray", "--models", sys.argv[1], "--port", "8765"]))
"""


def test_serve_ray_exits_0_on_sigterm(tiny_bundle):
    pytest.importorskip("ray")
    proc = subprocess.run([sys.executable, "-c", _RAY_SIGTERM, str(tiny_bundle)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
