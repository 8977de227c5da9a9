"""img2img and inpainting (issue #32) on the tiny bundle, against diffusers' own pipelines.

Identity attention is off (no people: id_scale 0), so the reference is diffusers'
``StableDiffusionImg2ImgPipeline`` / ``StableDiffusionInpaintPipeline`` (a 4-channel UNet: its
legacy inpainting rule) run on the same weights: the SAA UNet behind diffusers' UNet call, and the
VAE's posterior mean (our ``vae_encoder``'s latent) where diffusers would sample the posterior.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynamicid_rt import Request
from dynamicid_rt.errors import RequestError

diffusers = pytest.importorskip("diffusers")

SIZE = 256
STEPS = 6
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
              "lcm": "LCMScheduler"}


class _SAAOff(torch.nn.Module):
    """Our SAA UNet behind diffusers' UNet call, with no people (the unconditional ID tokens, id_scale 0)."""

    def __init__(self, saa, config, uncond: np.ndarray) -> None:
        super().__init__()
        self.saa, self.config = saa, config
        self.register_buffer("uncond", torch.from_numpy(np.asarray(uncond, np.float32)))

    device = property(lambda self: self.uncond.device)
    dtype = property(lambda self: self.uncond.dtype)

    def forward(self, sample, timestep, encoder_hidden_states, **_):
        rows = sample.shape[0]
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(rows)
        noise_pred = self.saa(sample, t, encoder_hidden_states, self.uncond[None].expand(rows, -1, -1),
                              torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.zeros(1), torch.tensor([4.0]),
                              torch.zeros(1), torch.tensor([0.5]))
        return (noise_pred,)


def _reference(kind: str, tiny_bundle, tiny_pipeline, sampler: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from dynamicid_rt.models import load_unet

    base = tiny_bundle / "base"
    vae = AutoencoderKL.from_pretrained(base / "vae").eval()
    encode = vae.encode
    vae.encode = lambda image, return_dict=True: SimpleNamespace(latents=encode(image).latent_dist.mean)
    unet = UNet2DConditionModel.from_pretrained(base / "unet").eval()
    scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_pretrained(base / "scheduler")
    cls = diffusers.StableDiffusionImg2ImgPipeline if kind == "img2img" else diffusers.StableDiffusionInpaintPipeline
    pipe = cls(vae=vae, text_encoder=CLIPTextModel.from_pretrained(base / "text_encoder").eval(),
               tokenizer=CLIPTokenizer.from_pretrained(base / "tokenizer"), unet=unet, scheduler=scheduler,
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    saa = load_unet(base, tiny_bundle / "dynamicid" / "SAA.bin").eval()
    pipe.__dict__["unet"] = _SAAOff(saa, unet.config, tiny_pipeline.identities.unconditional_tokens())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _photo(seed: int = 0) -> np.ndarray:
    """A smooth picture (a gradient and a disc): what a VAE sees in a photo, unlike pixel noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    disc = ((yy - 0.5) ** 2 + (xx - 0.4) ** 2 < 0.08).astype(np.float64)
    rgb = np.stack([yy, xx, disc * 0.8 + 0.1 * np.sin(7 * xx + seed)], axis=-1)
    return (rgb * 255).round().clip(0, 255).astype(np.uint8)


def _noise(seed: int) -> np.ndarray:
    return torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(seed)).numpy()


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m", "lcm"])
@pytest.mark.parametrize("strength", [0.5, 0.8])
def test_img2img_matches_diffusers(tiny_pipeline, tiny_bundle, sampler, strength, monkeypatch):
    from PIL import Image

    import dynamicid_rt.pipeline as pipeline_module

    photo, seed = _photo(), 11
    # LCM draws its step noise from the generator after the start noise in diffusers: replay that stream.
    generator = torch.Generator().manual_seed(seed)
    torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=generator)
    monkeypatch.setattr(pipeline_module, "step_noise_source",
                        lambda seeds: lambda shape: torch.randn(shape, generator=generator).numpy())
    req = Request(prompt="a photo of a street", negative_prompt="blurry", width=SIZE, height=SIZE, steps=STEPS,
                  guidance=5.0, sampler=sampler, seed=seed, init_image=photo, strength=strength,
                  initial_latents=_noise(seed))
    calls = []
    ours = tiny_pipeline.generate(req, progress=lambda info: calls.append(info.total)).latents
    pipe = _reference("img2img", tiny_bundle, tiny_pipeline, sampler)
    with torch.no_grad():
        ref = pipe(prompt="a photo of a street", negative_prompt="blurry", image=Image.fromarray(photo), strength=strength,
                   num_inference_steps=STEPS, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed),
                   output_type="latent").images.numpy()
    assert calls and calls[-1] == int(STEPS * strength)  # int(steps x strength) model calls, A1111's count
    assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_inpainting_matches_diffusers_legacy_rule_and_keeps_pixels(tiny_pipeline, tiny_bundle, sampler):
    from PIL import Image

    photo, seed, strength = _photo(1), 5, 0.75
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[64:192, 96:224] = 255  # on the 8-pixel grid, where diffusers' one-pixel-per-cell sampling is exact
    req = Request(prompt="a red door", width=SIZE, height=SIZE, steps=STEPS, sampler=sampler, seed=seed,
                  init_image=photo, strength=strength, mask=mask, mask_blur=0, initial_latents=_noise(seed))
    result = tiny_pipeline.generate(req)
    pipe = _reference("inpaint", tiny_bundle, tiny_pipeline, sampler)
    with torch.no_grad():
        ref = pipe(prompt="a red door", image=Image.fromarray(photo), mask_image=Image.fromarray(mask), strength=strength,
                   num_inference_steps=STEPS, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed),
                   height=SIZE, width=SIZE, output_type="latent").images.numpy()
    assert np.abs(result.latents - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    image = np.asarray(result.images[0])
    assert np.array_equal(image[mask == 0], photo[mask == 0])  # untouched pixels: the photo's own, bit for bit
    assert np.abs(image[mask > 0].astype(int) - photo[mask > 0]).mean() > 1.0  # the masked region was repainted


def test_blurred_mask_keeps_every_pixel_it_leaves_at_zero(tiny_pipeline):
    photo = _photo(2)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[100:150, 30:90] = 255  # off the 8-pixel grid
    req = Request(prompt="a window", width=SIZE, height=SIZE, steps=4, sampler="euler_a", seed=3, init_image=photo,
                  strength=0.9, mask=mask, mask_blur=4)
    image = np.asarray(tiny_pipeline.generate(req).images[0])
    alpha = req.mask_alpha()
    assert alpha[mask > 0].min() > 0 and (alpha[mask == 0] > 0).any()  # the blur widens the mask
    assert np.array_equal(image[alpha == 0], photo[alpha == 0])
    assert not np.array_equal(image[mask > 0], photo[mask > 0])


def test_bad_start_images_are_refused_in_one_line_before_any_work(tiny_pipeline, monkeypatch):
    photo = _photo()
    runs = []
    monkeypatch.setattr(tiny_pipeline.backend, "run", lambda *a, **k: runs.append(a) or pytest.fail("ran a model"))
    cases = {
        "multiples of 64 from 256 to 1024": dict(init_image=photo[:250], height=SIZE),
        r"fit it to 256x256 .*crop_resize\(image, 256, 256\)": dict(init_image=photo[:250]),
        "pass width=256, height=256": dict(init_image=photo, width=512, height=512),
        "the mask is 128x256": dict(init_image=photo, mask=np.full((256, 128), 255, np.uint8)),
        "the mask is empty": dict(init_image=photo, mask=np.zeros((SIZE, SIZE), np.uint8)),
        "strength=1.5": dict(init_image=photo, strength=1.5),
        "strength=-0.1": dict(init_image=photo, strength=-0.1),
        "needs the picture it repaints": dict(mask=np.full((SIZE, SIZE), 255, np.uint8)),
    }
    for message, fields in cases.items():
        with pytest.raises(RequestError, match=message) as caught:
            tiny_pipeline.generate(Request(**{"prompt": "x", "width": SIZE, "height": SIZE, **fields}))
        assert "\n" not in str(caught.value)
    assert not runs


def test_zero_strength_returns_the_picture(tiny_pipeline):
    photo = _photo()
    calls = []
    req = Request(prompt="x", width=SIZE, height=SIZE, steps=5, sampler="ddim", seed=1, init_image=photo, strength=0.1)
    result = tiny_pipeline.generate(req, progress=calls.append)
    assert not calls  # int(5 x 0.1) = 0 steps: the encoded picture, decoded
    assert np.array_equal(result.latents, tiny_pipeline.backend.run("vae_encoder", {
        "image": (photo.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]})["latent"])


def test_cli_inpaints_a_photo_and_writes_a1111_parameters(tiny_bundle, samples, tmp_path):
    from PIL import Image

    from dynamicid_rt import parse_parameters, read_parameters
    from dynamicid_rt.cli import main

    photo, mask = _photo(3), np.zeros((SIZE, SIZE), np.uint8)
    mask[:, 128:] = 255
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    code = main(["generate", "--models", str(tiny_bundle), "--backend", "torch", "--face", str(samples / "person_a.png"),
                 "--prompt", "a person by the door", "--init-image", str(tmp_path / "photo.png"), "--strength", "0.6",
                 "--mask", str(tmp_path / "mask.png"), "--mask-blur", "0", "--steps", "5", "--seed", "2",
                 "--sampler", "euler", "--out", str(out)])
    assert code == 0
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == photo.shape and np.array_equal(image[:, :128], photo[:, :128])
    fields = parse_parameters(read_parameters(out))
    assert fields["strength"] == 0.6 and fields["mask_blur"] == 0 and (fields["width"], fields["height"]) == (SIZE, SIZE)
    # The person's box defaults to the mask's region (the right half).
    assert fields["boxes"] == [(0.0, 0.5, 1.0, 1.0)]


def test_cli_refuses_a_mask_without_a_picture_and_never_overwrites_the_photo(tiny_bundle, tmp_path, caplog):
    from PIL import Image

    from dynamicid_rt.cli import main

    Image.fromarray(_photo()).save(tmp_path / "photo.png")
    Image.fromarray(np.full((SIZE, SIZE), 255, np.uint8)).save(tmp_path / "mask.png")
    assert main(["generate", "--models", str(tiny_bundle), "--prompt", "x", "--mask", str(tmp_path / "mask.png")]) != 0
    assert "give the picture with --init-image" in caplog.text
    before = (tmp_path / "photo.png").read_bytes()
    assert main(["generate", "--models", str(tiny_bundle), "--prompt", "x", "--init-image", str(tmp_path / "photo.png"),
                 "--out", str(tmp_path / "photo.png")]) != 0
    assert (tmp_path / "photo.png").read_bytes() == before
    assert "photo.png" in caplog.text.splitlines()[-1]


def test_a_unet_of_neither_layout_is_refused_in_one_line_at_load(tiny_bundle, tmp_path):
    import json
    import shutil

    from dynamicid_rt import Pipeline
    from dynamicid_rt.errors import ModelFolderError

    root = tmp_path / "inpainting"
    shutil.copytree(tiny_bundle, root)
    config_file = root / "base" / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["in_channels"] = 8  # neither SD1.5's 4 nor the inpainting UNet's 9 (tests/test_inpainting_unet.py)
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="the UNet takes 8 input channels for 4-channel latents") as caught:
        Pipeline.load(root, backend="torch", cache_dir=tmp_path / "cache")
    assert "\n" not in str(caught.value)


def test_cli_resize_fits_a_photo_of_any_size_and_says_so_without_it(tiny_bundle, samples, tmp_path, caplog):
    from PIL import Image

    from dynamicid_rt import crop_resize, parse_parameters, read_parameters
    from dynamicid_rt.cli import main

    photo = np.asarray(Image.fromarray(_photo(4)).resize((300, 200)))  # not a size the model takes
    mask = np.zeros((200, 300), np.uint8)
    mask[:, 150:] = 255
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    args = ["generate", "--models", str(tiny_bundle), "--backend", "torch", "--face", str(samples / "person_a.png"),
            "--prompt", "a person", "--init-image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"),
            "--mask-blur", "0", "--steps", "2", "--seed", "1", "--out", str(tmp_path / "out.png")]
    assert main(args) != 0
    assert "is 300x200 but the model takes" in caplog.text and "add --resize to crop and resize it to 320x256" in caplog.text
    assert main(args + ["--resize"]) == 0
    image = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    fitted = np.asarray(crop_resize(photo, 320, 256))
    kept = np.asarray(crop_resize(mask, 320, 256, nearest=True)) == 0
    assert image.shape == (256, 320, 3) and np.array_equal(image[kept], fitted[kept])
    assert parse_parameters(read_parameters(tmp_path / "out.png"))["width"] == 320
    assert main(args + ["--size", "256x256"]) != 0 and "--size 256x256" in caplog.text.splitlines()[-1]
