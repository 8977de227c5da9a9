"""The numpy samplers against diffusers' schedulers run on the same fake epsilon model and noise."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynamicid_rt.sampling import samplers
from dynamicid_rt.sampling.samplers import SAMPLERS, SchedulerConfig

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
# LCM, TCD and trailing DDIM have their own diffusers comparisons (test_fewstep_samplers.py).
MULTISTEP = tuple(s for s in SAMPLERS if s not in ("lcm", "tcd", "ddim_trailing"))


def fake_eps(x: np.ndarray, t: float) -> np.ndarray:
    """A smooth deterministic 'model': depends on the input and on the timestep."""
    x = x.astype(np.float64)
    return (0.3 * np.tanh(x) + 0.01 * (t / 1000.0) * np.cos(3.0 * x) + 0.02 * np.sin(t / 50.0)).astype(np.float32)


def diffusers_scheduler(name: str, overrides: dict):
    # As pipelines swap schedulers: from the SD1.5 config, whose unnamed keys take each class's defaults.
    d = {**SD15, **overrides}
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
@pytest.mark.parametrize("name", MULTISTEP)
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


@pytest.mark.parametrize("name", MULTISTEP)
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
    # A config without the key leaves each sampler its diffusers class's default, whatever the class.
    euler = {**SD15, "_class_name": "EulerDiscreteScheduler"}
    assert SchedulerConfig.from_dict(euler).timestep_spacing is None
    assert samplers.for_sampler(SchedulerConfig.from_dict(euler), "euler").timestep_spacing == "linspace"
    assert samplers.for_sampler(SchedulerConfig.from_dict(euler), "ddim").timestep_spacing == "leading"
    assert diffusers.EulerDiscreteScheduler.from_config(euler).config.timestep_spacing == "linspace"
    assert diffusers.DDIMScheduler.from_config(euler).config.timestep_spacing == "leading"
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
    code = "import sys, dynamicid_rt.sampling.samplers; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- what a diffusers user gets by swapping the scheduler of the real SD1.5 config ----------------

SD15_FILE = Path(samplers.__file__).parents[1] / "data" / "sd15" / "scheduler" / "scheduler_config.json"


def swapped_scheduler(name: str, config_file: Path):
    """``Class.from_config(pipe.scheduler.config)`` where the pipeline loaded ``config_file``."""
    loaded = diffusers.PNDMScheduler.from_pretrained(config_file.parent)  # what StableDiffusionPipeline holds
    classes = {"ddim": diffusers.DDIMScheduler, "pndm": diffusers.PNDMScheduler, "euler": diffusers.EulerDiscreteScheduler,
               "euler_a": diffusers.EulerAncestralDiscreteScheduler}
    if name in ("dpmpp_2m", "dpmpp_2m_karras"):
        return diffusers.DPMSolverMultistepScheduler.from_config(
            loaded.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=name == "dpmpp_2m_karras"
        )
    return classes[name].from_config(loaded.config)


def run_swapped(name: str, config_file: Path, steps: int, noise: np.ndarray):
    sched = swapped_scheduler(name, config_file)
    sched.set_timesteps(steps)
    generator = torch.Generator().manual_seed(5)
    x = torch.from_numpy(noise) * sched.init_noise_sigma
    inputs = []
    for t in sched.timesteps:
        inputs.append(sched.scale_model_input(x, t).numpy())
        eps = torch.from_numpy(fake_eps(inputs[-1], float(t)))
        x = sched.step(eps, t, x, **({"generator": generator} if name == "euler_a" else {})).prev_sample
    return sched, inputs, x.numpy()


@pytest.mark.parametrize("spacing", [None, "leading", "trailing"], ids=["unnamed", "leading", "trailing"])
@pytest.mark.parametrize("name", MULTISTEP)
def test_spacing_matches_swapped_diffusers_scheduler(name, spacing, tmp_path):
    raw = json.loads(SD15_FILE.read_text())
    assert "timestep_spacing" not in raw  # SD1.5 ships without it
    config_file = SD15_FILE
    if spacing is not None:
        config_file = tmp_path / "scheduler" / "scheduler_config.json"
        config_file.parent.mkdir()
        config_file.write_text(json.dumps({**raw, "timestep_spacing": spacing}))
    steps = 12
    noise = np.random.default_rng(9).standard_normal(SHAPE).astype(np.float32)
    sched, ref_inputs, ref = run_swapped(name, config_file, steps, noise)
    generator = torch.Generator().manual_seed(5)
    config = SchedulerConfig.from_json(config_file)
    calls = []

    def denoise(x, t, step):
        calls.append(x.copy())
        return fake_eps(x, t)

    out = samplers.sample(name, denoise, noise, config, steps,
                          noise_source=(lambda shape: torch.randn(shape, generator=generator).numpy()) if name == "euler_a" else None)
    np.testing.assert_allclose(samplers.timesteps(name, config, steps), sched.timesteps.numpy(), rtol=0, atol=1e-4)
    assert samplers.for_sampler(config, name).timestep_spacing == sched.config.timestep_spacing
    # Model inputs carry the σ schedule (Euler: x/sqrt(σ²+1), starting from noise·init_noise_sigma).
    assert len(calls) == len(ref_inputs)
    assert max(close(x, x_ref) for x, x_ref in zip(calls, ref_inputs)) <= 5e-6  # diffusers steps in float32
    assert close(out, ref) <= 1e-6


def test_unnamed_spacing_starts_euler_fully_noised():
    """The issue's numbers: Euler on SD1.5 (50 steps) starts at t = 999, σ 14.61, not t = 831, σ 5.99."""
    config = SchedulerConfig.from_json(SD15_FILE)
    sched = swapped_scheduler("euler", SD15_FILE)
    sched.set_timesteps(50)
    assert samplers.timesteps("euler", config, 50)[0] == pytest.approx(999.0)
    assert float(sched.sigmas[0]) == pytest.approx(14.6146, abs=1e-3)
    assert samplers.timesteps("ddim", config, 50)[0] == 981.0  # DDIM keeps "leading"
    assert samplers.timesteps("euler", SchedulerConfig.from_dict({**SD15, "timestep_spacing": "leading"}), 50)[0] == 981.0


# --- sampler names of other tools ---------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling, schedule, ours",
    [
        ("euler_ancestral", None, "euler_a"),  # ComfyUI
        ("Euler a", None, "euler_a"),  # A1111
        ("k_euler_a", None, "euler_a"),
        ("k_euler", None, "euler"),
        ("Euler", None, "euler"),
        ("DDIM", None, "ddim"),
        ("PLMS", None, "pndm"),
        ("DPM++ 2M", None, "dpmpp_2m"),
        ("DPM++ 2M Karras", None, "dpmpp_2m_karras"),  # A1111 < 1.9
        ("DPM++ 2M", "Karras", "dpmpp_2m_karras"),  # A1111 >= 1.9 "Schedule type"
        ("dpmpp_2m", "karras", "dpmpp_2m_karras"),  # ComfyUI sampler + scheduler
        ("dpmpp_2m", "normal", "dpmpp_2m"),
        ("DPM++ 2M", "Automatic", "dpmpp_2m_karras"),  # A1111 >= 1.9 default schedule of DPM++ 2M
        ("Euler a", "Automatic", "euler_a"),
        ("k_dpmpp_2m_ka", None, "dpmpp_2m_karras"),
        ("euler_ancestral", "normal", "euler_a"),
        ("dpmpp_2m_k", None, "dpmpp_2m_karras"),  # InvokeAI
        ("EulerAncestralDiscreteScheduler", None, "euler_a"),  # diffusers class
        ("DPMSolverMultistepScheduler", None, "dpmpp_2m"),
        ("Default", None, "default"),
        ("  dpmpp-2m  ", None, "dpmpp_2m"),
    ],
)
def test_sampler_aliases(spelling, schedule, ours):
    assert samplers.canonical_sampler(spelling, schedule) == ours


def test_request_accepts_aliases():
    from dynamicid_rt import Request

    Request(prompt="x", sampler="DPM++ 2M Karras").validate()
    Request(prompt="x", sampler="euler_ancestral").validate()
    with pytest.raises(ValueError, match="unknown sampler 'heun'"):
        Request(prompt="x", sampler="heun").validate()


def test_every_alias_names_a_sampler_and_bad_names_fail():
    assert set(samplers.SAMPLER_ALIASES.values()) <= set(SAMPLERS)
    assert all(samplers.canonical_sampler(name) == name for name in SAMPLERS)
    with pytest.raises(ValueError, match="unknown sampler 'heun'.*euler_a"):
        samplers.canonical_sampler("heun")
    with pytest.raises(ValueError, match="karras"):
        samplers.canonical_sampler("euler", "karras")
    with pytest.raises(ValueError, match="exponential"):
        samplers.canonical_sampler("dpmpp_2m", "exponential")


@pytest.mark.parametrize("name, scheduler", [("pndm", "PNDMScheduler"), ("ddim", "DDIMScheduler")])
def test_step_counts_past_the_schedule_are_refused_in_one_line(name, scheduler):
    """At 1000 steps diffusers' own leading spacing (+ steps_offset) reaches t = 1000, which has no
    alpha: we refuse that count before any work; 999 steps still match diffusers' timesteps."""
    import diffusers

    from dynamicid_rt.errors import RequestError
    from dynamicid_rt.sampling.schedules import timesteps

    reference = getattr(diffusers, scheduler).from_config(SD15)
    reference.set_timesteps(1000)
    assert int(np.max(reference.timesteps.numpy())) >= SD15["num_train_timesteps"]
    config = SchedulerConfig.from_dict(SD15)
    with pytest.raises(RequestError, match=rf"{name} with 1000 steps reaches timestep 1000.*at most 999"):
        timesteps(name, config, 1000)
    reference.set_timesteps(999)
    ours = timesteps(name, config, 999)
    assert set(ours.astype(int)) == set(reference.timesteps.numpy().astype(int))
