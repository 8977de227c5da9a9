"""Where things live (issues 16, 31): one home for the identity file, no import upward."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from dynamicid_rt.errors import RequestError
from dynamicid_rt.identity.value import Identity, load_saved, stack_identity_tokens

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
    assert not _imported_modules(PACKAGE / "formats" / "pngmeta.py") & {"..", "."}
    import dynamicid_rt
    from dynamicid_rt._version import __version__

    assert dynamicid_rt.__version__ == __version__


def test_identity_file_module_imports_neither_its_encoder_nor_its_cache():
    assert not _imported_modules(PACKAGE / "identity" / "value.py") & {".cache", ".encoder", ".faces", ".photos"}
    assert ".encoder" not in _imported_modules(PACKAGE / "identity" / "cache.py")


def test_a_model_misfit_is_one_error_wherever_it_is_found(tmp_path):
    narrow = Identity(tokens=np.ones((4, 8), np.float32), name="a")
    with pytest.raises(RequestError) as stacked:
        stack_identity_tokens([narrow], 16)
    with pytest.raises(RequestError) as loaded:
        load_saved(narrow.save(tmp_path / "a.npz"), 16, "")
    assert str(stacked.value) == str(loaded.value)


def test_names_that_stay_importable_where_they_were():
    from dynamicid_rt.identity.photos import face_crop, face_thumbnail, load_photo
    from dynamicid_rt.models.saa import SAAAttnProcessor, SAAInputs, SAAUNet, install_saa, load_unet  # noqa: F401
    from dynamicid_rt.models.saa_attention import SAAUNet as maths_unet
    from dynamicid_rt import load_photo as photo_loader

    assert load_photo is photo_loader and SAAUNet is maths_unet and callable(face_crop) and callable(face_thumbnail)
