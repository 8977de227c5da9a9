"""`dynamicid-rt serve` driven by an unchanged A1111 client (webuiapi) on a real loopback server,
against the Python API and the CLI on the same tiny bundle."""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import socket
import sys
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webuiapi = pytest.importorskip("webuiapi")

from dynamicid_rt import SAMPLERS, Request, canonical_sampler, parse_parameters, read_parameters  # noqa: E402
from dynamicid_rt.cli import main as cli_main  # noqa: E402
from server_helpers import api, b64, live  # noqa: E402,F401

# The keys of A1111's Processed.js() (modules/processing.py, 1.9 and later): what clients read.
A1111_INFO_KEYS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed", "all_subseeds",
    "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size", "restore_faces",
    "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "seed_resize_from_w",
    "seed_resize_from_h", "denoising_strength", "extra_generation_params", "index_of_first_image", "infotexts",
    "styles", "job_timestamp", "clip_skip", "is_using_inpainting_conditioning", "version",
}
SMALL = dict(width=256, height=256, steps=2)




def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _two_people(samples, **extra) -> dict:
    return {"dynamicid": {"args": [
        {"image": b64(samples / "person_a.png"), "box": [0, 0, 1, 0.5], "name": "person_a", **extra},
        {"image": b64(samples / "person_b.png"), "box": [0, 0.5, 1, 1], "face_prompt": "in a happy expression",
         "name": "person_b", **extra},
    ]}}


def test_txt2img_images_and_a1111_info(api):
    result = api.txt2img(prompt="a lighthouse", negative_prompt="fog", seed=11, batch_size=2, n_iter=2,
                         sampler_name="Euler a", cfg_scale=6, **SMALL)
    assert [im.size for im in result.images] == [(256, 256)] * 4
    info = result.info
    assert isinstance(info, dict) and set(info) == A1111_INFO_KEYS  # webuiapi parsed it as JSON
    assert info["all_seeds"] == [11, 12, 13, 14] and info["seed"] == 11 and info["sampler_name"] == "Euler a"
    for k, image in enumerate(result.images):  # each PNG carries its infotext, which reads back
        assert image.info["parameters"] == info["infotexts"][k]
        params = parse_parameters(info["infotexts"][k])
        assert (params["seed"], params["steps"], params["guidance"], params["sampler"]) == (11 + k, 2, 6.0, "euler_a")
        assert params["prompt"] == "a lighthouse" and params["negative_prompt"] == "fog"
    assert len({_pixels(im).tobytes() for im in result.images}) == 4  # four seeds, four images


def test_png_parameters_and_pixels_equal_the_clis(api, tiny_bundle, samples, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "cli.png"
    assert cli_main([
        "generate", "--models", str(tiny_bundle), "--backend", "torch", "--device", "cpu",
        "--face", str(samples / "person_a.png"), "--face", str(samples / "person_b.png"),
        "--face-prompt", "", "--face-prompt", "in a happy expression", "--box", "0,0,1,0.5", "--box", "0,0.5,1,1",
        "--id-scale", "0.8", "--prompt", "two friends", "--negative-prompt", "blurry", "--size", "256x256",
        "--steps", "2", "--guidance", "6", "--sampler", "dpmpp_2m_karras", "--seed", "21", "--out", str(out),
    ]) == 0
    people = _two_people(samples, id_scale=0.8)
    people["dynamicid"]["args"][0]["face_prompt"] = ""
    result = api.txt2img(prompt="two friends", negative_prompt="blurry", seed=21, cfg_scale=6, sampler_name="DPM++ 2M",
                         scheduler="Karras", alwayson_scripts=people, **SMALL)
    assert result.images[0].info["parameters"] == read_parameters(out)
    assert np.array_equal(_pixels(result.images[0]), _pixels(Image.open(out)))


def test_two_people_bit_for_bit_with_the_python_api(api, tiny_pipeline, samples):
    a = tiny_pipeline.encode_identity(samples / "person_a.png")
    b = tiny_pipeline.encode_identity(samples / "person_b.png", face_prompt="in a happy expression")
    direct = tiny_pipeline.generate(Request(prompt="two people hiking", identities=[a, b], boxes=[(0, 0, 1, .5), (0, .5, 1, 1)],
                                            seed=7, guidance=5.0, sampler="euler_a", **SMALL))
    served = api.txt2img(prompt="two people hiking", seed=7, cfg_scale=5, sampler_name="Euler a",
                         alwayson_scripts=_two_people(samples), **SMALL)
    assert np.array_equal(_pixels(served.images[0]), np.asarray(direct.images[0]))


def test_saved_identity_by_content_equals_its_photo(api, tiny_pipeline, samples, tmp_path):
    saved = tiny_pipeline.encode_identity(samples / "person_a.png").save(tmp_path / "a.npz")
    photo = api.txt2img(prompt="a portrait", seed=3, alwayson_scripts={"dynamicid": {"args": [{"image": b64(samples / "person_a.png")}]}},
                        **SMALL)
    stored = api.txt2img(prompt="a portrait", seed=3, alwayson_scripts={"dynamicid": {"args": [{"identity": b64(saved)}]}}, **SMALL)
    assert np.array_equal(_pixels(photo.images[0]), _pixels(stored.images[0]))
    other = dataclasses.replace(tiny_pipeline.encode_identity(samples / "person_a.png"), model_fingerprint="another-model")
    with pytest.raises(RuntimeError, match="422.*another model"):
        api.txt2img(prompt="x", alwayson_scripts={"dynamicid": {"args": [{"identity": b64(other.save(tmp_path / "o.npz"))}]}},
                    **SMALL)


def _cli_error(caplog, argv) -> str:
    caplog.clear()
    assert cli_main(["generate", *argv]) == 1
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR][-1]


@pytest.mark.parametrize("cli_args, body", [
    (["--steps", "0"], {"steps": 0}),
    (["--size", "500x512"], {"width": 500}),
    (["--seed", str(2**32)], {"seed": 2**32}),
    (["--guidance", "nan"], {"cfg_scale": float("nan")}),  # JSON's NaN literal: a string is no number
    (["--batch", "17"], {"batch_size": 17}),
    (["--id-scale=-1", "--face", "{a}"], {"alwayson_scripts": {"dynamicid": {"args": [{"image": "{a}", "id_scale": -1}]}}}),
    (["--box", "0,0,1,0.5", "--box", "0,1,1,0.5", "--face", "{a}", "--face", "{a}"],
     {"alwayson_scripts": {"dynamicid": {"args": [{"image": "{a}", "box": [0, 0, 1, 0.5]}, {"image": "{a}", "box": [0, 1, 1, 0.5]}]}}}),
])
def test_bad_request_is_422_with_the_clis_message_before_any_work(live, tiny_bundle, samples, caplog, tmp_path, monkeypatch,
                                                                  cli_args, body):
    server, service = live
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    photo = str(samples / "person_a.png")
    argv = ["--models", str(tiny_bundle), "--prompt", "x", *[a.replace("{a}", photo) for a in cli_args]]
    text = json.dumps({"prompt": "x", **body}).replace('"{a}"', json.dumps(b64(samples / "person_a.png")))
    monkeypatch.setattr(service.queue, "submit", lambda *a, **k: pytest.fail("a bad request reached the queue"))
    response = requests.post(f"{server.url}/sdapi/v1/txt2img", data=text, headers={"Content-Type": "application/json"})
    expected = _cli_error(caplog, argv)
    assert response.status_code == 422 and response.json() == {"detail": expected}


def test_bad_photos_and_unsupported_features_are_422(live, samples):
    url = f"{live[0].url}/sdapi/v1/txt2img"

    def detail(body):
        response = requests.post(url, json={"prompt": "x", **SMALL, **body})
        assert response.status_code == 422, response.text
        return response.json()["detail"]

    person = lambda **p: {"alwayson_scripts": {"dynamicid": {"args": [p]}}}  # noqa: E731
    assert "no face found" in detail(person(image=b64(samples / "no_face.png")))
    assert "not a PNG, JPEG or WebP" in detail(person(image=base64.b64encode(b"GIF89a" + bytes(64)).decode()))
    assert "exactly one of image" in detail(person(box=[0, 0, 1, 1]))
    assert "hires fix" in detail({"enable_hr": True})
    assert "only the 'dynamicid' script" in detail({"alwayson_scripts": {"ADetailer": {"args": [True]}}})
    assert "unknown sampler" in detail({"sampler_name": "nope"})
    assert "n_iter=0" in detail({"n_iter": 0})


def test_upload_cap_and_decompression_bomb(live):
    url = f"{live[0].url}/sdapi/v1/txt2img"
    huge = '{"prompt": "x", "alwayson_scripts": {"dynamicid": {"args": [{"image": "' + "A" * 50_000_000 + '"}]}}}'
    response = requests.post(url, data=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "upload cap" in response.json()["detail"]
    bomb = io.BytesIO()
    Image.new("L", (20000, 20000)).save(bomb, format="PNG")  # 400 Mpx in 0.4 MB
    assert len(bomb.getvalue()) < 1_000_000
    response = requests.post(url, json={"prompt": "x", "alwayson_scripts": {"dynamicid": {"args": [
        {"image": base64.b64encode(bomb.getvalue()).decode()}]}}})
    assert response.status_code == 422 and "megapixels" in response.json()["detail"]


def test_paths_in_requests_are_never_opened(live, samples, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes((samples / "person_a.png").read_bytes())
    opened = []
    sys.addaudithook(lambda event, args: event == "open" and str(secret) in str(args[0]) and opened.append(args))
    url = f"{live[0].url}/sdapi/v1/txt2img"
    for person in ({"image": str(secret)}, {"image": "file://" + str(secret)}, {"identity": str(secret)},
                   {"image": base64.b64encode(str(secret).encode()).decode()}, {"path": str(secret)}):
        response = requests.post(url, json={"prompt": str(secret), **SMALL, "alwayson_scripts": {"dynamicid": {"args": [person]}}})
        assert response.status_code == 422, (person, response.text)
    assert opened == []


def test_progress_queue_and_interrupt(live, api):
    server, _ = live
    results = {}

    def run(name, **body):
        results[name] = api.txt2img(prompt="x", width=256, height=256, **body)

    long = threading.Thread(target=run, args=("long",), kwargs={"steps": 400, "seed": 1})
    long.start()
    deadline = time.monotonic() + 30
    while (progress := api.get_progress())["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    short = threading.Thread(target=run, args=("short",), kwargs={"steps": 1, "seed": 2})
    short.start()
    while api.get_progress()["queue"]["waiting"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    progress = api.get_progress()
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0 and progress["queue"] == {"running": 1, "waiting": 1}
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.size == (256, 256)  # full size: the tiny autoencoder decodes the denoised estimate
    api.interrupt()
    long.join(30)
    short.join(30)
    # Interrupted in its only batch: A1111 returns the image of the current latent, so the client's
    # result.image works (an empty list made webuiapi raise IndexError).
    assert results["long"].image.size == (256, 256) and results["long"].info["all_seeds"] == [1]
    assert parse_parameters(results["long"].image.info["parameters"])["seed"] == 1
    assert len(results["short"].images) == 1 and results["short"].info["all_seeds"] == [2]
    assert api.get_progress()["queue"] == {"running": 0, "waiting": 0}


def test_client_that_disconnects_cancels_its_job(live, api, caplog):
    server, _ = live
    caplog.set_level(logging.INFO, logger="dynamicid_rt.server")
    body = json.dumps({"prompt": "x", "steps": 500, "sampler_name": "Euler", "width": 256, "height": 256}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 30
        while api.get_progress()["state"]["sampling_step"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    while api.get_progress()["queue"]["running"]:  # closing the socket stops the job within a step or two
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "client went away" in caplog.text


def test_concurrent_clients_each_get_their_own_result(live, tiny_pipeline):
    port = live[0].port
    got: dict[int, np.ndarray] = {}
    one_step = dict(SMALL, steps=1)

    def client(seed: int) -> None:
        result = webuiapi.WebUIApi(host="127.0.0.1", port=port).txt2img(prompt="a red boat", seed=seed, sampler_name="Euler",
                                                                         cfg_scale=5, **one_step)
        got[seed] = _pixels(result.images[0])

    threads = [threading.Thread(target=client, args=(100 + k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(got) == list(range(100, 108))
    for seed, pixels in got.items():
        direct = tiny_pipeline.generate(Request(prompt="a red boat", seed=seed, sampler="euler", guidance=5.0, **one_step))
        assert np.array_equal(pixels, np.asarray(direct.images[0])), seed


def test_samplers_models_options_and_scripts(api):
    listed = api.get_samplers()
    assert {canonical_sampler(alias) for s in listed for alias in s["aliases"]} == set(SAMPLERS)
    for sampler in listed:
        assert canonical_sampler(sampler["name"], sampler["options"].get("scheduler")) in sampler["aliases"]
    for name in ("DPM++ 2M", "Euler a", "Euler", "DDIM", "PLMS"):  # A1111's names, as the PNG parameters write them
        result = api.txt2img(prompt="x", seed=1, width=256, height=256, steps=1, sampler_name=name, scheduler="Automatic")
        assert result.info["sampler_name"] == name
        assert f"Sampler: {name}," in result.info["infotexts"][0]
    (model,) = api.get_sd_models()
    assert model["model_name"] == result.info["sd_model_name"] and "/" not in model["filename"]  # no server paths
    assert api.get_options()["sd_model_checkpoint"] == model["title"]
    assert api.get_scripts()["txt2img"] == ["dynamicid"]
    assert {s["name"] for s in api.get_schedulers()} == {"automatic", "uniform", "karras"}


def test_identities_are_cached_across_requests(api, samples, tmp_path, monkeypatch):
    from dynamicid_rt.identity.faces import FaceAnalyzer

    pixels = np.asarray(Image.open(samples / "person_b.png").convert("RGB")).copy()
    pixels[0, 0] ^= 1  # a photo no earlier test has encoded
    Image.fromarray(pixels).save(tmp_path / "new.png")
    detect, calls = FaceAnalyzer.detect, []
    monkeypatch.setattr(FaceAnalyzer, "detect", lambda self, photo: calls.append(1) or detect(self, photo))
    people = {"dynamicid": {"args": [{"image": b64(tmp_path / "new.png")}]}}
    first = api.txt2img(prompt="x", seed=5, alwayson_scripts=people, **SMALL)
    second = api.txt2img(prompt="x", seed=5, alwayson_scripts=people, **SMALL)
    # Analysed when the first request arrived (its face found) and when it was encoded; the second
    # request's photo was not analysed again.
    assert len(calls) == 2
    assert np.array_equal(_pixels(first.images[0]), _pixels(second.images[0]))
