"""The full-size random bundle (slow: about 7 GB and minutes to write; run with -m slow)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dynamicid_rt.contract import ModelDims
from dynamicid_rt.models.base import bundled_sd15_config_dir, read_model_dims
from dynamicid_rt.tiny.bundle import write_tiny_bundle
from dynamicid_rt.tiny.sizes import FULL


def check_full_size_layout(root: Path) -> None:
    """The bundle at ``root`` has the released models' sizes in the real layout."""
    paths = write_tiny_bundle(root, full_size=True)  # reused: writes nothing when complete
    assert read_model_dims(paths) == FULL.dims == ModelDims()  # the released sizes are the contract's defaults
    for part in ("unet", "vae"):
        written = json.loads((root / "base" / part / "config.json").read_text())
        shipped = json.loads((bundled_sd15_config_dir() / part / "config.json").read_text())
        assert {k: written[k] for k in shipped if not k.startswith("_")} == {k: v for k, v in shipped.items() if not k.startswith("_")}
    vision = json.loads((root / "image_encoder" / "config.json").read_text())
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["num_attention_heads"]) == (1280, 32, 16)
    assert sorted(p.name for p in (root / "samples").glob("person_*.png")) == ["person_a.png", "person_a_smiling.png", "person_b.png"]
    assert json.loads((root / "tiny_bundle.json").read_text())["sizes"] == "full"


@pytest.mark.slow
def test_full_size_bundle_has_the_released_sizes(tmp_path):
    root = Path(os.environ.get("DYNAMICID_FULL_BUNDLE", tmp_path / "full"))
    check_full_size_layout(root)
