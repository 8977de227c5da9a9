"""Where things live (issue 16): one home for the identity file, no import upward, old names kept."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from dynamicid_rt.errors import RequestError
from dynamicid_rt.identity import Identity, load_saved, stack_identity_tokens

PACKAGE = Path(__file__).resolve().parents[1] / "dynamicid_rt"


def _imported_modules(path: Path) -> set[str]:
    """Relative modules a file imports at module level, spelt as written (``.identity``)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            found.add("." * node.level + (node.module or ""))
    return found


def test_version_module_imports_nothing_and_nothing_reads_the_package_for_it():
    assert not [n for n in ast.parse((PACKAGE / "_version.py").read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert "." not in _imported_modules(PACKAGE / "pngmeta.py")
    import dynamicid_rt
    from dynamicid_rt._version import __version__

    assert dynamicid_rt.__version__ == __version__


def test_identity_file_module_imports_neither_its_encoder_nor_its_cache():
    assert not _imported_modules(PACKAGE / "identity.py") & {".identity_cache", ".identity_encoder", ".faces", ".photos"}
    assert ".identity_encoder" not in _imported_modules(PACKAGE / "identity_cache.py")


def test_a_model_misfit_is_one_error_wherever_it_is_found(tmp_path):
    narrow = Identity(tokens=np.ones((4, 8), np.float32), name="a")
    with pytest.raises(RequestError) as stacked:
        stack_identity_tokens([narrow], 16)
    with pytest.raises(RequestError) as loaded:
        load_saved(narrow.save(tmp_path / "a.npz"), 16, "")
    assert str(stacked.value) == str(loaded.value)


@pytest.mark.parametrize("module, name, home", [
    ("dynamicid_rt.identity", "IdentityEncoder", "dynamicid_rt.identity_encoder"),
    ("dynamicid_rt.identity", "clip_pixel_values", "dynamicid_rt.clip_preprocessing"),
    ("dynamicid_rt.identity_cache", "load_saved", "dynamicid_rt.identity"),
    ("dynamicid_rt.identity_cache", "check_same_model", "dynamicid_rt.identity"),
])
def test_moved_names_still_import_with_a_deprecation_warning(module, name, home):
    import importlib

    with pytest.warns(DeprecationWarning, match=home):
        found = getattr(importlib.import_module(module), name)
    assert found is getattr(importlib.import_module(home), name)


def test_names_that_stay_importable_where_they_were():
    from dynamicid_rt.faces import face_crop, face_thumbnail, load_photo
    from dynamicid_rt.models.saa import SAAAttnProcessor, SAAInputs, SAAUNet, install_saa, load_unet  # noqa: F401
    from dynamicid_rt.models.saa_attention import SAAUNet as maths_unet
    from dynamicid_rt.photos import load_photo as photo_loader

    assert load_photo is photo_loader and SAAUNet is maths_unet and callable(face_crop) and callable(face_thumbnail)
