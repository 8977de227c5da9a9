"""The numpy samplers against diffusers' schedulers run on the same fake epsilon model and noise."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dynamicid_rt import samplers
from dynamicid_rt.samplers import SAMPLERS, SchedulerConfig

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# SD1.5's scheduler/scheduler_config.json.
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SHAPE = (2, 4, 6, 5)


def fake_eps(x: np.ndarray, t: float) -> np.ndarray:
    """A smooth deterministic 'model': depends on the input and on the timestep."""
    x = x.astype(np.float64)
    return (0.3 * np.tanh(x) + 0.01 * (t / 1000.0) * np.cos(3.0 * x) + 0.02 * np.sin(t / 50.0)).astype(np.float32)


def diffusers_scheduler(name: str, overrides: dict):
    # As pipelines swap schedulers: from the PNDM config, so spacing "leading" unless overridden.
    d = {"timestep_spacing": "leading", **SD15, **overrides}
    if name == "ddim":
        return diffusers.DDIMScheduler.from_config(d)
    if name == "euler":
        return diffusers.EulerDiscreteScheduler.from_config(d)
    if name == "euler_a":
        return diffusers.EulerAncestralDiscreteScheduler.from_config(d)
    if name in ("dpmpp_2m", "dpmpp_2m_karras"):
        return diffusers.DPMSolverMultistepScheduler.from_config(
            d, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=name == "dpmpp_2m_karras"
        )
    return diffusers.PNDMScheduler.from_config(d)


def run_diffusers(name: str, overrides: dict, steps: int, noise: np.ndarray, seed: int):
    """The diffusers pipeline loop; returns (final latent, [(t, model input)])."""
    sched = diffusers_scheduler(name, overrides)
    sched.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(noise) * sched.init_noise_sigma
    calls = []
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        calls.append((float(t), inp.numpy().copy()))
        eps = torch.from_numpy(fake_eps(inp.numpy(), float(t)))
        kwargs = {"generator": generator} if name == "euler_a" else {}
        x = sched.step(eps, t, x, **kwargs).prev_sample
    return x.numpy(), calls


def run_ours(name: str, overrides: dict, steps: int, noise: np.ndarray, seed: int):
    generator = torch.Generator().manual_seed(seed)
    calls, steps_seen = [], []

    def denoise(x, t, step):
        calls.append((t, x.copy()))
        steps_seen.append(step)
        return fake_eps(x, t)

    def noise_source(shape):
        return torch.randn(shape, generator=generator, dtype=torch.float32).numpy()

    config = SchedulerConfig.from_dict({**SD15, **overrides})
    out = samplers.sample(name, denoise, noise, config, steps, noise_source=noise_source if name == "euler_a" else None)
    assert steps_seen == list(range(len(calls)))
    return out, calls


def close(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference relative to the scale of the reference."""
    return float(np.abs(a.astype(np.float64) - b).max() / max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 4, 7, 10, 25])
@pytest.mark.parametrize("name", SAMPLERS)
def test_matches_diffusers(name, steps, spacing):
    noise = np.random.default_rng(steps).standard_normal(SHAPE).astype(np.float32)
    overrides = {"timestep_spacing": spacing}
    ref, ref_calls = run_diffusers(name, overrides, steps, noise, seed=7)
    out, calls = run_ours(name, overrides, steps, noise, seed=7)

    assert out.dtype == np.float32 and out.shape == SHAPE
    assert len(calls) == len(ref_calls) == samplers.num_model_calls(name, steps)
    config = SchedulerConfig.from_dict({**SD15, **overrides})
    np.testing.assert_allclose(samplers.timesteps(name, config, steps), [t for t, _ in ref_calls], rtol=0, atol=1e-4)
    for (t, x), (t_ref, x_ref) in zip(calls, ref_calls):
        assert t == pytest.approx(t_ref, abs=1e-4)
        assert close(x, x_ref) <= 1e-5
    assert close(out, ref) <= 1e-5


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize(
    "overrides",
    [
        {"set_alpha_to_one": True, "steps_offset": 0},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"solver_type": "heun"},
    ],
    ids=["alpha_one", "linear", "cosine", "heun"],
)
def test_config_variants_match_diffusers(name, overrides):
    if name == "dpmpp_2m_karras" and overrides.get("beta_schedule") == "squaredcos_cap_v2":
        pytest.skip("diffusers' DPM-Solver steps off its sigma table here (repeated truncated timesteps)")
    noise = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    ref, ref_calls = run_diffusers(name, overrides, 8, noise, seed=3)
    out, calls = run_ours(name, overrides, 8, noise, seed=3)
    assert [t for t, _ in calls] == pytest.approx([t for t, _ in ref_calls], abs=1e-4)
    assert close(out, ref) <= 1e-5


def test_trained_betas_match_diffusers():
    betas = np.linspace(0.0002, 0.03, 1000) ** 1.1
    noise = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    overrides = {"trained_betas": betas.tolist()}
    ref, _ = run_diffusers("ddim", overrides, 6, noise, seed=0)
    out, _ = run_ours("ddim", overrides, 6, noise, seed=0)
    assert close(out, ref) <= 1e-5


def test_euler_a_rng_is_deterministic_and_used():
    noise = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    config = SchedulerConfig()

    def denoise(x, t, step):
        return fake_eps(x, t)

    a = samplers.sample("euler_a", denoise, noise, config, 5, rng=np.random.default_rng(11))
    b = samplers.sample("euler_a", denoise, noise, config, 5, rng=np.random.default_rng(11))
    c = samplers.sample("euler_a", denoise, noise, config, 5, rng=np.random.default_rng(12))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    with pytest.raises(ValueError, match="either rng or noise_source"):
        samplers.sample("euler_a", denoise, noise, config, 5, rng=np.random.default_rng(), noise_source=np.zeros)


def test_callback_reports_every_call_and_can_cancel():
    noise = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    seen = []

    def denoise(x, t, step):
        return fake_eps(x, t)

    def record(step, total, x):
        seen.append((step, total, x.dtype, x.shape))

    samplers.sample("pndm", denoise, noise, SchedulerConfig(), 6, callback=record)
    assert seen == [(i, 7, np.float32, SHAPE) for i in range(7)]

    class Stop(Exception):
        pass

    def cancel(step, total, x):
        if step == 2:
            raise Stop

    calls = []
    with pytest.raises(Stop):
        samplers.sample("euler", lambda x, t, s: calls.append(s) or fake_eps(x, t), noise, SchedulerConfig(), 10, callback=cancel)
    assert calls == [0, 1, 2]


def test_bad_arguments():
    config = SchedulerConfig()
    noise = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError) as e:
        samplers.sample("heun", lambda x, t, s: x, noise, config, 4)
    assert all(n in str(e.value) for n in SAMPLERS)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="steps"):
            samplers.sample("ddim", lambda x, t, s: x, noise, config, bad)
        with pytest.raises(ValueError, match="steps"):
            samplers.num_model_calls("ddim", bad)
    with pytest.raises(ValueError, match="euler_a"):
        samplers.timesteps("plms", config, 4)
    with pytest.raises(ValueError, match="shape"):
        samplers.sample("ddim", lambda x, t, s: x[:1], noise, config, 4)


def test_config_from_dict_and_json(tmp_path):
    config = SchedulerConfig.from_dict(SD15)
    assert config == SchedulerConfig()  # the defaults are SD1.5's
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({**SD15, "timestep_spacing": "trailing", "some_future_key": 3}))
    assert SchedulerConfig.from_json(path).timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="v_prediction"):
        SchedulerConfig.from_dict({**SD15, "prediction_type": "v_prediction"})
    with pytest.raises(ValueError, match="beta_schedule"):
        SchedulerConfig.from_dict({**SD15, "beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        SchedulerConfig.from_dict({**SD15, "rescale_betas_zero_snr": True})
    # An Euler config without the key is spaced "linspace" by diffusers.
    euler = {**SD15, "_class_name": "EulerDiscreteScheduler"}
    assert SchedulerConfig.from_dict(euler).timestep_spacing == "linspace"
    assert diffusers.EulerDiscreteScheduler.from_config(euler).config.timestep_spacing == "linspace"
    with pytest.raises(ValueError, match="timestep_spacing"):
        SchedulerConfig(timestep_spacing="uniform")


def test_sampler_for_scheduler_class():
    f = samplers.sampler_for_scheduler_class
    assert f("PNDMScheduler", SD15) == "pndm"
    assert f("DDIMScheduler", SD15) == "ddim"
    assert f("EulerDiscreteScheduler", SD15) == "euler"
    assert f("EulerAncestralDiscreteScheduler", SD15) == "euler_a"
    assert f("DPMSolverMultistepScheduler", SD15) == "dpmpp_2m"
    assert f("DPMSolverMultistepScheduler", {**SD15, "use_karras_sigmas": True}) == "dpmpp_2m_karras"
    assert f("LMSDiscreteScheduler", SD15) == "pndm"


def test_module_imports_no_torch():
    code = "import sys, dynamicid_rt.samplers; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
