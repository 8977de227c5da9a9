"""``dynamicid-rt cache``: what the engine caches hold (per model, precision, LoRA set, backend,
with sizes and last use), pruning, and the LRU eviction of LoRA entries and derived copies."""
from __future__ import annotations

import logging
import os
import shutil
import time

import pytest

from dynamicid_rt.modelfiles.paths import ModelPaths


@pytest.fixture()
def cache(tiny_bundle, tmp_path, monkeypatch):
    """A user cache holding a real text_encoder entry, a LoRA'd copy and ONNX Runtime's derived copy."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from dynamicid_rt.export.cache import build_engines

    (entry,) = build_engines(ModelPaths.from_folder(tiny_bundle), engines=["text_encoder"])
    lora = entry.path.with_name("text_encoder-fp32-lora-0123456789abcdef")
    shutil.copytree(entry.path, lora)
    derived = lora / "onnxruntime"
    derived.mkdir()
    (derived / "optimized.onnx").write_bytes(b"\0" * 1000)
    return entry.path, lora, derived


def _age(path, days: float) -> None:
    old = time.time() - days * 86400
    os.utime(path, (old, old))


def test_listing_names_model_engine_precision_lora_backend_size_and_use(cache, tiny_bundle, capsys):
    from dynamicid_rt.cli import main

    entry, lora, derived = cache
    _age(lora, 2)
    _age(derived, 2)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "text_encoder" in line]
    assert len(rows) == 3 and all(str(tiny_bundle)[-30:] in row for row in rows)
    assert any("0123456789abcdef" in r and "onnxruntime" in r and "2 d ago" in r for r in rows)
    assert any(" - " in r and " onnx " in r and "just now" in r for r in rows)
    total = sum(p.stat().st_size for p in entry.parent.rglob("*") if p.is_file() and p.parent.name != entry.parent.name)
    assert f"3 items, {total / 1e9:.2f} GB" in out


def test_lora_entries_beyond_budget_are_evicted_lru_never_one_in_use(cache, caplog):
    from dynamicid_rt.export.cache_admin import evict_beyond_budget

    entry, lora, derived = cache
    newer = lora.with_name("text_encoder-fp32-lora-fedcba9876543210")
    shutil.copytree(lora, newer)
    _age(lora, 3)
    _age(derived, 3)
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.export.cache_admin"):
        gone = evict_beyond_budget(entry.parent, budget=1)
    assert {g.path for g in gone} == {lora, derived}  # the old LoRA entry and its copy; never the plain entry
    assert entry.exists() and newer.exists()  # the newer one is in use (used just now), with a line saying so
    assert "removed" in caplog.text and f"keeping {newer}" in caplog.text


def test_prune_by_age_then_size(cache, capsys):
    from dynamicid_rt.cli import main

    entry, lora, derived = cache
    for path in (entry, lora, derived):
        _age(path, 10)
    assert main(["cache", "prune", "--older-than", "30"]) == 0
    assert "removed 0 items" in capsys.readouterr().out and lora.exists()
    assert main(["cache", "prune", "--max-size", "0"]) == 0
    assert "removed 3 items" in capsys.readouterr().out
    assert not entry.exists() and not lora.exists()
    assert main(["cache", "prune"]) == 1  # no criterion: one line


def test_doctor_shows_the_total(cache):
    from dynamicid_rt.doctor import doctor_report

    report, _ = doctor_report(None)
    assert "engine caches: 3 items" in report

