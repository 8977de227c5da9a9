"""An SD1.5 inpainting checkpoint (a 9-channel UNet, laid out as runwayml's: base/unet/config.json
with in_channels 9) on the tiny bundle: accepted, the SAA weights merged into it, and its steps equal
to diffusers' ``StableDiffusionInpaintPipeline`` (identity attention off, the same weights), for
inpainting, img2img and txt2img; with two people the regions change and the rest stays bit-exact,
and ONNX Runtime and OpenVINO agree with torch (>= 40 dB)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from dynamicid_rt import Pipeline, Request

diffusers = pytest.importorskip("diffusers")

from test_img2img import SIZE, STEPS, _noise, _photo, _SAAOff  # noqa: E402
from test_img2img_backends import _inpaint, _psnr, check_two_regions  # noqa: E402
from test_img2img_backends import _mask as _two_regions  # noqa: E402
from test_img2img_backends import _photo as _window_photo  # noqa: E402

SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}


@pytest.fixture(scope="module")
def inpainting_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with its UNet widened to 9 input channels (conv_in gains 5 random input
    channels, as runwayml's inpainting UNet did from SD1.5's); every other file as it was."""
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("inpainting") / "bundle"
    shutil.copytree(tiny_bundle, root)
    unet = UNet2DConditionModel.from_pretrained(root / "base" / "unet")
    wide = UNet2DConditionModel.from_config({**unet.config, "in_channels": 9})
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    extra = torch.randn((weight.shape[0], 5, *weight.shape[2:]), generator=torch.Generator().manual_seed(9))
    state["conv_in.weight"] = torch.cat([weight, extra * weight.std()], dim=1)
    wide.load_state_dict(state)
    shutil.rmtree(root / "base" / "unet")
    wide.save_pretrained(root / "base" / "unet")
    return root


@pytest.fixture(scope="module")
def inpainting_pipeline(inpainting_bundle, tmp_path_factory):
    pipe = Pipeline.load(inpainting_bundle, backend="torch", device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))
    yield pipe
    pipe.close()


def _reference(bundle, pipeline, sampler: str):
    """diffusers' inpainting pipeline on the same weights: our SAA UNet (9 channels) behind its UNet
    call with no people, and the VAE's posterior mean where diffusers samples the posterior."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from dynamicid_rt.models import load_unet

    base = bundle / "base"
    vae = AutoencoderKL.from_pretrained(base / "vae").eval()
    encode = vae.encode
    # Contiguous, as our engines take arrays: diffusers hands the VAE a channels-last view of the
    # picture, and the masked picture's flat (zero) area amplifies that layout's different float
    # rounding through the VAE's group norms (2e-4 on its latent: a reference artefact, not a rule).
    vae.encode = lambda image, return_dict=True: SimpleNamespace(latents=encode(image.contiguous()).latent_dist.mean)
    unet = UNet2DConditionModel.from_pretrained(base / "unet").eval()
    pipe = diffusers.StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=CLIPTextModel.from_pretrained(base / "text_encoder").eval(),
        tokenizer=CLIPTokenizer.from_pretrained(base / "tokenizer"), unet=unet,
        scheduler=getattr(diffusers, SCHEDULERS[sampler]).from_pretrained(base / "scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    saa = load_unet(base, bundle / "dynamicid" / "SAA.bin").eval()
    pipe.__dict__["unet"] = _SAAOff(saa, unet.config, pipeline.identities.unconditional_tokens())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[64:192, 96:224] = 255
    return mask


def test_the_folder_is_accepted_and_the_saa_weights_fit_it(inpainting_pipeline, inpainting_bundle, capsys):
    from dynamicid_rt.cli import main

    assert inpainting_pipeline.dims.unet_in_channels == 9 and inpainting_pipeline.dims.latent_channels == 4
    assert inpainting_pipeline.dims.inpainting_unet
    assert main(["inspect", str(inpainting_bundle)]) == 0
    out = capsys.readouterr().out
    assert "an inpainting UNet (9 input channels" in out and "usable: yes" in out


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_inpainting_matches_diffusers_inpaint_pipeline(inpainting_pipeline, inpainting_bundle, sampler):
    from PIL import Image

    photo, seed, strength = _photo(2), 7, 0.75
    request = Request(prompt="a blue door", width=SIZE, height=SIZE, steps=STEPS, sampler=sampler, seed=seed,
                      init_image=photo, strength=strength, mask=_mask(), mask_blur=0, initial_latents=_noise(seed))
    result = inpainting_pipeline.generate(request)
    pipe = _reference(inpainting_bundle, inpainting_pipeline, sampler)
    with torch.no_grad():
        ref = pipe(prompt="a blue door", image=Image.fromarray(photo), mask_image=Image.fromarray(_mask()),
                   strength=strength, num_inference_steps=STEPS, guidance_scale=5.0,
                   generator=torch.Generator().manual_seed(seed), height=SIZE, width=SIZE, output_type="latent").images
    ref = ref.numpy()
    assert np.abs(result.latents - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    image, keep = np.asarray(result.images[0]), _mask() == 0
    assert np.array_equal(image[keep], photo[keep])  # the rest of the picture, bit for bit
    assert np.abs(image[~keep].astype(int) - photo[~keep]).mean() > 1.0


def test_txt2img_is_the_inpaint_pipeline_with_everything_repainted(inpainting_pipeline, inpainting_bundle):
    """Without a picture the UNet sees a blank picture and an all-white mask (A1111's conditioning
    for these models): diffusers' pipeline given a white mask at strength 1 does the same."""
    from PIL import Image

    seed = 3
    ours = inpainting_pipeline.generate(Request(prompt="a garden", width=SIZE, height=SIZE, steps=STEPS, sampler="ddim",
                                                seed=seed, initial_latents=_noise(seed))).latents
    pipe = _reference(inpainting_bundle, inpainting_pipeline, "ddim")
    with torch.no_grad():
        ref = pipe(prompt="a garden", image=Image.fromarray(_photo()), mask_image=Image.new("L", (SIZE, SIZE), 255),
                   strength=1.0, num_inference_steps=STEPS, guidance_scale=5.0,
                   generator=torch.Generator().manual_seed(seed), height=SIZE, width=SIZE, output_type="latent").images
    ref = ref.numpy()
    assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@pytest.fixture(scope="module")
def torch_image(inpainting_pipeline, samples):
    return _inpaint(inpainting_pipeline, samples)


def test_two_people_into_two_regions_and_the_rest_bit_exact(torch_image):
    image, request = torch_image
    assert np.array_equal(request.mask, _two_regions())
    check_two_regions(image, request)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_cpu_backends_match_torch(backend, torch_image, inpainting_bundle, samples, tmp_path_factory):
    pytest.importorskip(backend)
    folder = tmp_path_factory.getbasetemp() / "inpainting-engines"  # exported once, shared by both backends
    pipe = Pipeline.load(inpainting_bundle, backend=backend, device="cpu", precision="fp32", onnx_cache=folder,
                         cache_dir=tmp_path_factory.mktemp("cache"))
    try:
        assert pipe.dims.inpainting_unet  # the exported UNet takes 9 channels
        image, request = _inpaint(pipe, samples)
    finally:
        pipe.close()
    alpha = request.mask_alpha()
    assert np.array_equal(image[alpha == 0], _window_photo()[alpha == 0])
    assert _psnr(image, torch_image[0]) >= 40.0


def test_the_web_api_serves_it_bit_for_bit(inpainting_pipeline):
    """An unchanged A1111 client against `serve` on the inpainting model: the Python API's image, and
    A1111's info says the model uses inpainting conditioning."""
    webuiapi = pytest.importorskip("webuiapi")
    pytest.importorskip("fastapi")
    from PIL import Image

    from server_helpers import start_server

    server, _ = start_server(inpainting_pipeline)
    try:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
        served = api.img2img(images=[Image.fromarray(_photo(5))], mask_image=Image.fromarray(_mask()), mask_blur=0,
                             denoising_strength=0.75, inpainting_fill=1, inpaint_full_res=False, prompt="a green door",
                             seed=8, cfg_scale=5, sampler_name="DDIM", steps=4, width=SIZE, height=SIZE)
    finally:
        server.stop()
    direct = inpainting_pipeline.generate(Request(prompt="a green door", init_image=_photo(5), mask=_mask(), mask_blur=0,
                                                  strength=0.75, seed=8, guidance=5.0, sampler="ddim", steps=4,
                                                  width=SIZE, height=SIZE))
    assert np.array_equal(np.asarray(served.images[0].convert("RGB")), np.asarray(direct.images[0]))
    assert served.info["is_using_inpainting_conditioning"] is True
