"""LCM, TCD and trailing DDIM against diffusers' schedulers built by ``from_config`` on the shipped
SD1.5 scheduler config, on the same fake epsilon model and the same noise."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dynamicid_rt.sampling import samplers
from dynamicid_rt.models.base import bundled_sd15_config_dir
from dynamicid_rt.sampling.names import canonical_sampler, sampler_for_scheduler_class
from dynamicid_rt.sampling.schedules import SchedulerConfig, alphas_cumprod

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SD15 = json.loads((bundled_sd15_config_dir() / "scheduler" / "scheduler_config.json").read_text())
SHAPE = (2, 4, 6, 5)
TOL = 1e-6


def fake_eps(x: np.ndarray, t: float) -> np.ndarray:
    x = x.astype(np.float64)
    return (0.3 * np.tanh(x) + 0.01 * (t / 1000.0) * np.cos(3.0 * x) + 0.02 * np.sin(t / 50.0)).astype(np.float32)


def diffusers_scheduler(name: str, float64: bool):
    if name == "lcm":
        sched = diffusers.LCMScheduler.from_config(SD15)
    elif name == "tcd":
        sched = diffusers.TCDScheduler.from_config(SD15)
    else:
        sched = diffusers.DDIMScheduler.from_config(SD15, timestep_spacing="trailing")
    if float64:
        # The same β table in float64, as ours: compares the algorithms without float32 cumprod rounding.
        sched.alphas_cumprod = sched.alphas_cumprod.double()
        sched.final_alpha_cumprod = sched.final_alpha_cumprod.double()
    return sched


def run_diffusers(name: str, steps: int, noise: np.ndarray, seed: int, gamma: float, float64: bool):
    sched = diffusers_scheduler(name, float64)
    sched.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if float64 else torch.float32
    x = torch.from_numpy(noise).to(dtype) * sched.init_noise_sigma
    calls = []
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        calls.append((float(t), inp.numpy().copy()))
        eps = torch.from_numpy(fake_eps(inp.numpy(), float(t))).to(dtype)
        kwargs = {"generator": generator} if name != "ddim_trailing" else {}
        if name == "tcd":
            kwargs["eta"] = gamma
        x = sched.step(eps, t, x, **kwargs).prev_sample
    return x.numpy(), calls


def run_ours(name: str, steps: int, noise: np.ndarray, seed: int, gamma: float, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    calls = []

    def denoise(x, t, step):
        assert step == len(calls)
        calls.append((t, x.copy()))
        return fake_eps(x, t)

    def noise_source(shape):  # replays diffusers' randn_tensor draws
        return torch.randn(shape, generator=generator, dtype=dtype).numpy()

    config = SchedulerConfig.from_dict(SD15)
    return samplers.sample(name, denoise, noise, config, steps, noise_source=noise_source, gamma=gamma), calls


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(1.0, float(np.abs(b).max())))


CASES = [("lcm", 0.3), ("tcd", 0.3), ("tcd", 0.0), ("tcd", 1.0), ("ddim_trailing", 0.3)]


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize(("name", "gamma"), CASES)
def test_matches_diffusers(name, gamma, steps):
    noise = np.random.default_rng(steps).standard_normal(SHAPE).astype(np.float32)
    ref, ref_calls = run_diffusers(name, steps, noise, 11, gamma, float64=True)
    out, calls = run_ours(name, steps, noise, 11, gamma, dtype=torch.float64)  # diffusers draws in the sample dtype
    config = SchedulerConfig.from_dict(SD15)
    assert len(calls) == len(ref_calls) == samplers.num_model_calls(name, steps) == steps
    np.testing.assert_array_equal(samplers.timesteps(name, config, steps), [t for t, _ in ref_calls])
    assert [t for t, _ in calls] == [t for t, _ in ref_calls]
    for (_, x), (_, x_ref) in zip(calls, ref_calls):
        assert rel(x, x_ref) <= TOL
    assert out.dtype == np.float32
    assert rel(out, ref) <= TOL


@pytest.mark.parametrize(("name", "gamma"), CASES)
def test_matches_diffusers_float32_tables(name, gamma):
    """Against diffusers' own float32 tables the only difference is their cumprod rounding."""
    noise = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    ref, _ = run_diffusers(name, 4, noise, 5, gamma, float64=False)
    out, _ = run_ours(name, 4, noise, 5, gamma)
    assert rel(out, ref) <= 2e-5
    np.testing.assert_allclose(alphas_cumprod(SchedulerConfig.from_dict(SD15)), diffusers_scheduler(name, False).alphas_cumprod.numpy(), rtol=1e-5)


def test_noise_is_drawn_between_steps_only():
    draws = []

    def source(shape):
        draws.append(shape)
        return np.zeros(shape)

    config = SchedulerConfig.from_dict(SD15)
    x = np.ones(SHAPE, np.float32)
    samplers.sample("lcm", lambda x, t, i: np.zeros_like(x), x, config, 4, noise_source=source)
    assert len(draws) == 3
    draws.clear()
    samplers.sample("tcd", lambda x, t, i: np.zeros_like(x), x, config, 4, noise_source=source, gamma=0.0)
    assert draws == []


def test_names_and_bad_arguments():
    assert canonical_sampler("LCM") == "lcm"  # A1111 / ComfyUI
    assert canonical_sampler("LCMScheduler") == "lcm"
    assert canonical_sampler("TCDScheduler") == "tcd"
    assert canonical_sampler("DDIM", "trailing") == "ddim_trailing"
    assert canonical_sampler("ddim_trailing") == "ddim_trailing"
    assert sampler_for_scheduler_class("LCMScheduler", {}) == "lcm"
    assert sampler_for_scheduler_class("TCDScheduler", {}) == "tcd"
    config = SchedulerConfig.from_dict(SD15)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match="at most 50 steps"):
        samplers.sample("lcm", lambda x, t, i: x, x, config, 51)
    with pytest.raises(ValueError, match="gamma"):
        samplers.sample("tcd", lambda x, t, i: x, x, config, 4, gamma=1.5)


def test_pipeline_runs_tcd_with_its_gamma(tiny_pipeline):
    from dynamicid_rt import Request
    from dynamicid_rt.errors import RequestError

    def image(gamma):
        req = Request(prompt="x", width=256, height=256, steps=2, sampler="TCDScheduler", guidance=1.0, seed=4, tcd_gamma=gamma)
        result = tiny_pipeline.generate(req)
        assert result.sampler == "tcd"
        return np.asarray(result.latents)

    assert np.abs(image(0.0) - image(0.9)).max() > 1e-3  # γ reaches the sampler (noise between the 2 steps)
    np.testing.assert_array_equal(image(0.3), image(0.3))
    with pytest.raises(RequestError, match="tcd_gamma"):
        Request(prompt="x", tcd_gamma=1.5)
