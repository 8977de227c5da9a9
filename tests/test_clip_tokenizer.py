"""The runtime's CLIP tokenizer (tokenizers library) against transformers' CLIPTokenizer."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from dynamicid_rt.prompts.tokenizer import ClipTokenizer
from dynamicid_rt.errors import ModelFolderError
from dynamicid_rt.modelfiles.paths import ModelPaths

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "a photo of a person",
    "",
    "  Hello,   WORLD!!  it's   a dog's life; 123 4567 ",
    "Ça va? naïve café 東京タワー 🙂 ß ﬁ Ω",
    "e\u0301 combining accents, ＡＢＣ full width",
    "don't we'll THEY'RE I'M you've she'd",
    "tab\tnewline\nand\r\nreturns",
    "a,b.c;d:e(f)[g]{h} <tag> @user #hash $5 100% a&b ~`|\\",
    "photo of a man, (masterpiece:1.2), [blue eyes], {red|green}",
    "<|endoftext|> x <|startoftext|>",
    "a portrait of a person, " * 20,  # > 77 tokens
    "x" * 300,
]


@pytest.fixture(scope="module")
def folder(tiny_bundle):
    return tiny_bundle / "base" / "tokenizer"  # vocab.json + merges.txt + special-token files, as SD1.5 ships


def reference_ids(folder, prompts=PROMPTS) -> np.ndarray:
    ref = transformers.CLIPTokenizer.from_pretrained(str(folder))
    return ref(list(prompts), padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]


def test_ids_equal_transformers(folder):
    ours = ClipTokenizer(folder, 77)(PROMPTS)
    assert ours.dtype == np.int64 and ours.shape == (len(PROMPTS), 77)
    np.testing.assert_array_equal(ours, reference_ids(folder))


def test_tokenizer_json_only_folder(folder, tmp_path):
    only_json = tmp_path / "tokenizer"
    only_json.mkdir()
    transformers.CLIPTokenizer.from_pretrained(str(folder)).backend_tokenizer.save(str(only_json / "tokenizer.json"))
    assert [p.name for p in only_json.iterdir()] == ["tokenizer.json"]
    ours = ClipTokenizer(only_json, 77)(PROMPTS)
    np.testing.assert_array_equal(ours, reference_ids(folder))
    np.testing.assert_array_equal(ours, reference_ids(only_json))
    # and a model folder accepts it as its tokenizer
    assert ModelPaths.from_folder(folder.parent.parent, tokenizer=only_json).problems() == []


def test_pad_token_from_the_folder(folder, tmp_path):
    """SD2-style tokenizers pad with "!" (special_tokens_map.json), not with end-of-text."""
    other = tmp_path / "tokenizer"
    shutil.copytree(folder, other)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        data = json.loads((other / name).read_text())
        data["pad_token"] = "!"
        (other / name).write_text(json.dumps(data))
    ours = ClipTokenizer(other, 77)(PROMPTS[:3])
    ref = reference_ids(other, PROMPTS[:3])
    np.testing.assert_array_equal(ours, ref)
    vocab = json.loads((folder / "vocab.json").read_text())
    assert ours[0, -1] == vocab["!"] != vocab["<|endoftext|>"]


def test_long_prompt_truncated_with_warning(folder, caplog):
    tokenizer = ClipTokenizer(folder, 77)
    with caplog.at_level(logging.WARNING, logger="dynamicid_rt.prompts.tokenizer"):
        ids = tokenizer(["a portrait of a person, " * 20, "a photo"])
    assert len(caplog.records) == 1 and "truncated after: 'a portrait of a person , a portrait" in caplog.text
    vocab = json.loads((folder / "vocab.json").read_text())
    assert ids[0, 0] == vocab["<|startoftext|>"] and ids[0, 76] == vocab["<|endoftext|>"]
    assert tokenizer.decode(ids[1]) == "a photo"


def test_folder_without_tokenizer_files(tmp_path):
    with pytest.raises(ModelFolderError, match="tokenizer.json nor vocab.json"):
        ClipTokenizer(tmp_path, 77)
