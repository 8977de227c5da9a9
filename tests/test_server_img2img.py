"""``POST /sdapi/v1/img2img`` driven by an unchanged A1111 client (webuiapi) against `dynamicid-rt
serve` on the tiny bundle: two people inpainted into two regions of a photo, and the refusals."""
from __future__ import annotations

import numpy as np
import pytest
import requests
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webuiapi = pytest.importorskip("webuiapi")

from dynamicid_rt import Request, parse_parameters  # noqa: E402
from server_helpers import api, b64, live  # noqa: E402,F401

SIZE = 256




def _photo() -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    return (np.stack([yy, xx, 0.5 + 0.4 * np.sin(9 * yy * xx)], axis=-1) * 255).round().astype(np.uint8)


def _two_regions() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[32:224, 16:112] = 255
    mask[32:224, 144:240] = 255
    return mask


def _people(samples) -> dict:
    return {"dynamicid": {"args": [{"image": b64(samples / "person_a.png"), "name": "person_a"},
                                   {"image": b64(samples / "person_b.png"), "name": "person_b"}]}}


def test_two_people_inpainted_bit_for_bit_with_the_python_api(api, tiny_pipeline, samples):
    photo, mask = _photo(), _two_regions()
    served = api.img2img(images=[Image.fromarray(photo)], mask_image=Image.fromarray(mask), denoising_strength=0.8,
                         mask_blur=0, inpainting_fill=1, inpaint_full_res=False, prompt="two people at a window",
                         seed=4, cfg_scale=5, sampler_name="Euler", steps=4, width=SIZE, height=SIZE,
                         alwayson_scripts=_people(samples))
    image = np.asarray(served.images[0].convert("RGB"))
    a = tiny_pipeline.encode_identity(samples / "person_a.png")
    b = tiny_pipeline.encode_identity(samples / "person_b.png")
    direct = tiny_pipeline.generate(Request(prompt="two people at a window", identities=[a, b], init_image=photo,
                                            mask=mask, mask_blur=0, strength=0.8, seed=4, guidance=5.0, sampler="euler",
                                            steps=4, width=SIZE, height=SIZE))
    assert np.array_equal(image, np.asarray(direct.images[0]))
    assert np.array_equal(image[mask == 0], photo[mask == 0])
    fields = parse_parameters(served.info["infotexts"][0])
    assert fields["strength"] == 0.8 and fields["mask_blur"] == 0
    assert fields["boxes"] == [(0.125, 0.0625, 0.875, 0.4375), (0.125, 0.5625, 0.875, 0.9375)]  # the mask's regions
    assert served.info["denoising_strength"] == 0.8


def test_img2img_without_a_mask(api):
    served = api.img2img(images=[Image.fromarray(_photo())], denoising_strength=0.5, prompt="a street", seed=1,
                         sampler_name="DDIM", steps=4, width=SIZE, height=SIZE)
    assert served.images[0].size == (SIZE, SIZE)
    assert "Denoising strength: 0.5" in served.info["infotexts"][0]


@pytest.mark.parametrize(("fields", "message"), [
    ({"inpainting_fill": 0}, "inpainting_fill=0: only 1"),
    ({"inpaint_full_res": True}, "inpaint_full_res=true"),
    ({"denoising_strength": 1.5}, "strength=1.5"),
    ({"width": 512, "height": 512}, "pass width=256, height=256"),
    ({"init_images": []}, "send exactly one"),
    ({"mask": "EMPTY"}, "the mask is empty"),
    ({"restore_faces": True}, "face restoration"),
])
def test_refusals_are_422_with_one_line(live, fields, message):
    server, _ = live
    body = {"prompt": "x", "init_images": [b64_array(_photo())], "mask": b64_array(_two_regions()), "mask_blur": 0,
            "inpainting_fill": 1, "inpaint_full_res": False, "width": SIZE, "height": SIZE, "steps": 2, **fields}
    if body["mask"] == "EMPTY":
        body["mask"] = b64_array(np.zeros((SIZE, SIZE), np.uint8))
    response = requests.post(f"{server.url}/sdapi/v1/img2img", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"] and "\n" not in response.json()["detail"]


def b64_array(pixels: np.ndarray) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_progress_counts_the_steps_img2img_runs(live):
    """/sdapi/v1/progress's sampling_steps is what the job runs: int(steps × strength) per image
    for img2img (A1111 counts the same), all the steps for txt2img."""
    from dynamicid_rt.server.img2img import Img2ImgRequest, make_img2img_plan
    from dynamicid_rt.server.plan import make_plan

    _, service = live
    body = {"prompt": "x", "init_images": [b64_array(_photo())], "width": SIZE, "height": SIZE, "steps": 10,
            "n_iter": 2}
    for strength, expected in ((0.5, 5), (0.75, 7), (0.05, 0)):
        plan = make_img2img_plan(Img2ImgRequest(**body, denoising_strength=strength), service._arrival)
        assert plan.total_steps == 2 * expected
    assert make_plan(Img2ImgRequest(**body), service._arrival).total_steps == 20  # txt2img fields alone
