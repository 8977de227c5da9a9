"""The API embedding apps live on (issue 11): identities from tokens or from an ArcFace embedding,
the final latents, loading without the insightface pack, ``python -m``/``--version``, full
``--help``, ``py.typed``, and the SPEC §6 layering of the request type, the CLI and the desktop."""
from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dynamicid_rt
from dynamicid_rt import Identity, ModelFolderError, Request, RequestError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def person_a(tiny_pipeline, samples) -> Identity:
    return tiny_pipeline.encode_identity(samples / "person_a.png")


def _small(identities, **changes) -> Request:
    return Request(prompt="a person in a park", identities=identities, width=256, height=256, steps=2, seed=11, **changes)


def test_identity_from_tokens_gives_the_photo_identity_image(tiny_pipeline, person_a):
    stored = Identity.from_tokens(person_a.tokens.astype(np.float64).tolist(), name="stored")
    assert stored.tokens.dtype == np.float32 and stored.name == "stored" and stored.face_prompt is None
    from_photo = tiny_pipeline.generate(_small([person_a]))
    from_tokens = tiny_pipeline.generate(_small([stored]))
    np.testing.assert_array_equal(np.asarray(from_tokens.images[0]), np.asarray(from_photo.images[0]))
    for bad in (np.zeros((3, 64)), np.zeros((4, 64), np.int64), np.full((4, 64), np.nan)):
        with pytest.raises(RequestError, match="tokens"):
            Identity.from_tokens(bad)


def test_identity_from_tokens_survives_save_and_load(tmp_path, person_a):
    stored = Identity.from_tokens(person_a.tokens, name="stored", face_prompt="in a happy expression")
    again = Identity.load(stored.save(tmp_path / "stored.npz"))
    np.testing.assert_array_equal(again.tokens, person_a.tokens)
    assert (again.name, again.face_prompt, again.face_box, again.thumbnail) == ("stored", "in a happy expression", None, None)


def test_encode_from_embedding_equals_encoding_the_photo(tiny_pipeline, samples, person_a):
    face = tiny_pipeline.detect_faces(samples / "person_a.png")[person_a.face_index]
    scaled = face.embedding * 3.0  # an unnormalised embedding is normalised, like insightface's normed_embedding
    ident = tiny_pipeline.encode_identity_from_embedding(scaled, samples / "person_a.png", name="app")
    np.testing.assert_allclose(ident.tokens, person_a.tokens, rtol=1e-5, atol=1e-6)
    assert ident.name == "app" and ident.thumbnail is None
    with pytest.raises(RequestError, match="512"):
        tiny_pipeline.encode_identity_from_embedding(np.ones(128), samples / "person_a.png")
    with pytest.raises(RequestError, match="zero"):
        tiny_pipeline.encode_identity_from_embedding(np.zeros(512), samples / "person_a.png")


def test_encode_from_embedding_with_expression_edit(tiny_pipeline, samples, person_a):
    """The IMR edit from app-given landmarks equals the IMR run here on the same rasters."""
    from dynamicid_rt.identity.faces import raster_from_landmarks

    face = tiny_pipeline.detect_faces(samples / "person_a.png")[person_a.face_index]
    landmarks = np.linspace(20, 490, 212).reshape(106, 2)  # x, y in the photo resized to 512x512
    target = landmarks[::-1].copy()
    source, edit = "in a neutral expression, in front view", "in a happy expression, facing up"
    with pytest.raises(RequestError, match="landmarks"):
        tiny_pipeline.encode_identity_from_embedding(face.embedding, samples / "person_a.png", face_prompt=edit)
    ident = tiny_pipeline.encode_identity_from_embedding(
        face.embedding, samples / "person_a.png", face_prompt=edit, source_prompt=source,
        landmarks=landmarks, target_landmarks=target,
    )
    rasters = np.stack([raster_from_landmarks(landmarks), raster_from_landmarks(target)])[:, None]
    expected = tiny_pipeline.backend.run("imr", {
        "id_tokens": person_a.base_tokens[None], "landmarks": rasters.astype(np.float32),
        "text_pooled": tiny_pipeline.prompts.pooled([source, edit]),
    })["edited_tokens"][0]
    np.testing.assert_allclose(ident.tokens, expected, rtol=1e-5, atol=1e-6)
    assert ident.face_prompt == edit and not np.allclose(ident.tokens, ident.base_tokens)


def test_result_latents_are_the_final_sampler_state_and_decode_to_the_image(tiny_pipeline, tiny_bundle, person_a):
    seen = []
    result = tiny_pipeline.generate(_small([person_a], batch=2), progress=lambda info: seen.append(info.latent.copy()))
    assert result.latents.shape == (2, 4, 32, 32) and result.latents.dtype == np.float32
    np.testing.assert_array_equal(result.latents, seen[-1])
    # Reference decode: the VAE engine on latents / the VAE config's scaling_factor, to 8 bits.
    scale = json.loads((tiny_bundle / "base" / "vae" / "config.json").read_text()).get("scaling_factor", 0.18215)
    for i in range(2):
        image = tiny_pipeline.backend.run("vae_decoder", {"latent": result.latents[i : i + 1] / np.float32(scale)})["image"][0]
        pixels = ((image.transpose(1, 2, 0) + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        np.testing.assert_array_equal(pixels, np.asarray(result.images[i]))


@pytest.fixture(scope="module")
def folder_without_insightface(tiny_bundle, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("no-insightface")
    for entry in ("base", "image_encoder", "dynamicid"):
        (root / entry).symlink_to(tiny_bundle / entry, target_is_directory=True)
    return root


def test_load_and_generate_without_the_insightface_pack(monkeypatch, folder_without_insightface, tmp_path, person_a, samples):
    from dynamicid_rt import Pipeline
    from dynamicid_rt.identity import faces

    built = []
    original = faces.FaceAnalyzer.__init__
    monkeypatch.setattr(faces.FaceAnalyzer, "__init__", lambda self, *a, **k: (built.append(a), original(self, *a, **k))[1])
    with Pipeline.load(folder_without_insightface, backend="torch", device="cpu", cache_dir=tmp_path) as pipe:
        result = pipe.generate(_small([Identity.from_tokens(person_a.tokens)]))
        assert result.images[0].size == (256, 256) and not built  # no face analyzer was built
        with pytest.raises(ModelFolderError) as info:
            pipe.encode_identity(samples / "person_a.png")
    message = str(info.value)
    assert "\n" not in message and "insightface" in message and "does not exist" in message


def test_python_m_and_version():
    from importlib.metadata import version

    for command in ([sys.executable, "-m", "dynamicid_rt", "--version"], [str(Path(sys.executable).with_name("dynamicid-rt")), "--version"]):
        if not Path(command[0]).exists():
            continue  # the console script exists only where the package is installed
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout.strip()
        assert out == f"dynamicid-rt {version('dynamicid-rt')}" == f"dynamicid-rt {dynamicid_rt.__version__}"
    proc = subprocess.run([sys.executable, "-m", "dynamicid_rt", "generate", "--help"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, COLUMNS="200"))
    assert proc.returncode == 0 and "--id-scale" in proc.stdout


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_documents_every_option_with_its_choices():
    from dynamicid_rt.cli import build_parser

    parser = build_parser()
    for name, sub in {"": parser, **_subparsers(parser)}.items():
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            where = f"{name or 'dynamicid-rt'} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{where} has no help"
            if isinstance(action.choices, range):  # listed as "LO-HI"
                assert f"{action.choices[0]}-{action.choices[-1]}" in text, f"{where}: range missing from --help"
                continue
            for choice in action.choices or ():
                assert str(choice) in text, f"{where}: choice {choice!r} missing from --help"


def test_py_typed_is_shipped():
    import tomllib

    assert (Path(dynamicid_rt.__file__).parent / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["dynamicid_rt"]


def _imports(path: Path, package: str = "dynamicid_rt") -> list[str]:
    """Modules a file imports from, relative ones spelt from ``package`` (``.faces`` -> dynamicid_rt.identity.faces)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package  # "from .." is the parent
            names.append(f"{base}{'.' + module if module else ''}" if node.level else module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_request_module_stands_below_identity_encoding():
    """SPEC §6: the request type (layer 1) imports nothing from identity encoding (layer 5)."""
    own = [m for m in _imports(ROOT / "dynamicid_rt" / "request.py") if m.startswith("dynamicid_rt")]
    assert own and not [m for m in own if m.split(".")[1] in ("identity", "faces", "pipeline", "pngmeta", "backends")]
    code = "import sys, dynamicid_rt.request; print(sorted(m for m in sys.modules if m.startswith('dynamicid_rt')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "dynamicid_rt.identity.value" not in loaded and "dynamicid_rt.identity.faces" not in loaded


def test_cli_and_desktop_use_only_the_public_api():
    # The CLI's own helpers: its reports and messages, the demo bundle, the build-engines command.
    own_helpers = {"dynamicid_rt.models.inspect", "dynamicid_rt.doctor", "dynamicid_rt.messages", "dynamicid_rt.tiny.bundle", "dynamicid_rt.cli.build_engines",
                   "dynamicid_rt.server.command", "dynamicid_rt.modelfiles.part_options"}  # part_options: the model parts as options
    server = sorted((ROOT / "dynamicid_rt" / "server").glob("*.py"))  # the web API: a front end too
    cli = [ROOT / "dynamicid_rt" / "cli" / "__init__.py", ROOT / "dynamicid_rt" / "cli" / "__main__.py"]
    files = [*cli, *sorted((ROOT / "desktop").glob("*.py")), *server]
    for path in files:
        in_desktop = path.parent.name == "desktop"  # installed as dynamicid_rt.desktop
        in_server = path in server
        package = "dynamicid_rt.desktop" if in_desktop else "dynamicid_rt.server" if in_server else "dynamicid_rt.cli"
        for module in _imports(path, package):
            if not module.startswith("dynamicid_rt") or module == "dynamicid_rt":
                continue
            if (in_desktop and module.startswith("dynamicid_rt.desktop")) or (in_server and module.startswith("dynamicid_rt.server")) \
                    or (path in cli and module.startswith("dynamicid_rt.cli")):
                continue
            assert (path in cli or in_server) and module in own_helpers, f"{path.relative_to(ROOT)} imports {module}"
    public = set(dynamicid_rt.__all__)
    for name in ("Identity", "Pipeline", "format_parameters", "parse_parameters", "save_png", "read_parameters", "Person"):
        assert name in public and getattr(dynamicid_rt, name) is not None
