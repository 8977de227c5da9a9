"""What the CPU can do (issue 21): one line naming the fastest CPU path, from /proc/cpuinfo's flags
(faked here per CPU kind), in ``doctor``, the desktop's status bar and auto's explanation."""
from __future__ import annotations

import logging
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported (the status bar test)

import pytest  # noqa: E402

from dynamicid_rt.backends import BACKENDS, choose_auto, probes, resolve  # noqa: E402
from dynamicid_rt.errors import BackendError  # noqa: E402

BASE_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma"
CPUS = {  # /proc/cpuinfo flags of each kind of CPU, and the start of the line it gets
    "avx2": (f"{BASE_FLAGS} avx2", "AVX2 only: OpenVINO f32; a CPU with AVX-512 BF16 or AMX runs bf16 ~1.8× faster"),
    "avx512": (f"{BASE_FLAGS} avx2 avx512f avx512bw avx512vl avx512_vnni", "AVX-512 without BF16: OpenVINO f32; a CPU"),
    "avx512_bf16": (f"{BASE_FLAGS} avx2 avx512f avx512bw avx512_bf16", "AVX-512 BF16: OpenVINO bf16, its default here (~1.8× f32"),
    "amx": (f"{BASE_FLAGS} avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", "AMX: OpenVINO bf16, its default here (~1.8× f32"),
}


@pytest.fixture
def fake_cpu(monkeypatch, tmp_path):
    """Makes the probes read a /proc/cpuinfo of the given flags (two processors, as the kernel writes it)."""

    def use(flags: str | None) -> None:
        info = tmp_path / "cpuinfo"
        if flags is not None:
            block = f"processor\t: {{n}}\nvendor_id\t: GenuineTest\nmodel name\t: Test CPU 9000\nflags\t\t: {flags}\n\n"
            info.write_text(block.format(n=0) + block.format(n=1))
        monkeypatch.setattr(probes, "CPUINFO", info)
        probes._cpuinfo_fields.cache_clear()

    yield use
    probes._cpuinfo_fields.cache_clear()  # the real CPU again for the tests that follow


@pytest.mark.parametrize("cpu", list(CPUS))
def test_the_line_names_the_fastest_path_of_each_cpu(fake_cpu, cpu):
    flags, start = CPUS[cpu]
    fake_cpu(flags)
    line = probes.cpu_fastest_path()
    print(f"{cpu}: {line}")
    assert line.startswith(start) and "this project's bench" in line and "\n" not in line
    assert probes.cpu_model() == "Test CPU 9000"
    assert probes.cpu_has_bf16() == (cpu in ("avx512_bf16", "amx"))
    # What the line promises is what the registry offers: bf16 exactly where the line names it.
    assert ("bf16" in BACKENDS["openvino"].precisions_here("cpu")) == ("OpenVINO bf16" in line)


def test_without_cpuinfo_the_line_says_so_unless_openvino_reports_bf16(fake_cpu):
    fake_cpu(None)  # macOS, Windows: no /proc/cpuinfo
    assert probes.cpu_fastest_path().startswith("CPU features unknown (no /proc/cpuinfo): OpenVINO f32")
    assert probes.cpu_fastest_path(["FP32", "INT8"]).startswith("CPU features unknown")
    assert probes.cpu_fastest_path(["BF16", "FP32"]).startswith("bf16 units: OpenVINO bf16")


def test_the_bench_figures_give_the_ratio_the_line_quotes():
    assert f"{probes.BENCH_BF16_VS_TORCH / probes.BENCH_F32_AVX2_VS_TORCH:.1f}" == "1.8"


@pytest.mark.parametrize("cpu", list(CPUS))
def test_auto_names_the_cpu_capability_in_its_choice_and_log(fake_cpu, caplog, cpu):
    fake_cpu(CPUS[cpu][0])
    line = probes.cpu_fastest_path()
    choice = choose_auto(device="cpu")
    assert choice.device == "cpu" and choice.cpu == line
    assert choice.explain().endswith(f"; this CPU: {line}")
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.backends.registry"):
        info, device, precision = resolve("auto", device="cpu")
    assert info.name == choice.backend and device == "cpu"
    picked = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend auto: picked")]
    assert picked == [f"backend auto: picked {choice.explain()}"]
    # Asked for bf16, auto finds it only on the CPUs whose line names it.
    if "OpenVINO bf16" in line:
        assert choose_auto(device="cpu", precision="bf16").backend in ("openvino", "torch")
    else:
        with pytest.raises(BackendError, match="does not run bf16 here"):
            choose_auto(device="cpu", precision="bf16")


@pytest.mark.parametrize("cpu", list(CPUS))
def test_openvino_runs_bf16_by_default_only_where_the_cpu_has_the_units_and_says_why(fake_cpu, caplog, cpu):
    if not probes.installed("openvino"):
        pytest.skip("needs openvino installed")
    fake_cpu(CPUS[cpu][0])
    units = cpu in ("avx512_bf16", "amx")
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.backends.registry"):
        _, _, precision = resolve("openvino", device="cpu")
    assert precision == ("bf16" if units else "fp32")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("openvino on cpu: precision")]
    if units:
        assert line.startswith("openvino on cpu: precision bf16, its default on a CPU with bf16 units") and "--precision fp32" in line
    else:
        assert line == "openvino on cpu: precision fp32, because this CPU has no bf16 units: avx512_bf16 or amx_bf16 (it runs bf16 where they are)"
    assert resolve("openvino", device="cpu", precision="fp32")[2] == "fp32"  # asked for: kept, on every CPU
    assert resolve("torch", device="cpu")[2] == "fp32"  # torch's bf16 is no faster per image: never its default


def test_auto_on_a_gpu_says_nothing_of_the_cpu(monkeypatch):
    monkeypatch.setattr(probes, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(probes, "_torch_built_with_cuda", lambda: True)
    if not probes.installed("torch"):
        pytest.skip("needs torch installed for a cuda candidate")
    choice = choose_auto(device="cuda")
    assert choice.cpu == "" and "this CPU" not in choice.explain()


@pytest.mark.parametrize("cpu", ["avx2", "amx"])
def test_doctor_prints_the_line(fake_cpu, monkeypatch, cpu):
    from dynamicid_rt.doctor import doctor_report

    fake_cpu(CPUS[cpu][0])
    if probes.installed("openvino"):  # the real CPU's OpenVINO view would mix in: fake it too
        from dynamicid_rt.backends import openvino_backend

        monkeypatch.setattr(openvino_backend, "optimization_capabilities", lambda core=None: ["FP32", "INT8"])
    report, _ = doctor_report(None)
    line = probes.cpu_fastest_path()
    assert f"CPU: Test CPU 9000; fastest path: {line}" in report.splitlines()
    assert f"this CPU: {line}" in next(ln for ln in report.splitlines() if ln.startswith("auto picks:"))


def test_doctor_on_this_machine_asks_openvino_too():
    from dynamicid_rt.doctor import doctor_report

    report, _ = doctor_report(None)
    line = next(ln for ln in report.splitlines() if ln.startswith("CPU: "))
    capabilities = []
    if probes.installed("openvino"):
        from dynamicid_rt.backends.openvino_backend import optimization_capabilities

        capabilities = optimization_capabilities()
    assert line.endswith(f"fastest path: {probes.cpu_fastest_path(capabilities)}")


@pytest.mark.parametrize("cpu", ["avx2", "avx512_bf16"])
def test_the_desktop_status_bar_shows_the_line(fake_cpu, qtbot, tmp_path, cpu):
    pytest.importorskip("PySide6", reason="the desktop app needs PySide6")
    pytest.importorskip("pytestqt", reason="the desktop tests need pytest-qt")
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QLabel

    from dynamicid_rt.desktop.app import MainWindow

    fake_cpu(CPUS[cpu][0])

    def no_models(spec):
        raise BackendError("no models in this test")

    win = MainWindow(store=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat), pipeline_factory=no_models)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: not win.loading, timeout=10000)
    line = probes.cpu_fastest_path()
    labels = [label.text() for label in win.statusBar().findChildren(QLabel)]
    assert line in labels and CPUS[cpu][1] in win.cpu_label.text() and line in win.cpu_label.toolTip()
    win.close()
