"""SD1.5's CLIP tokenizer on the ``tokenizers`` library, so the runtime never imports transformers.

A tokenizer folder holds ``tokenizer.json`` or ``vocab.json`` + ``merges.txt`` (the SD1.5 layout);
both give the same tokenizer. As transformers' ``CLIPTokenizer`` does with either file set, only the
vocabulary and merges are read, and the pipeline around them (NFC, whitespace runs to one space,
lower case; CLIP's word/number/punctuation split; byte-level BPE with the ``</w>`` end-of-word
suffix; ``<|startoftext|>`` … ``<|endoftext|>``) is built here the way transformers builds it. The
pad token comes from ``special_tokens_map.json`` or ``tokenizer_config.json`` (SD1.5:
``<|endoftext|>``, SD2: ``!``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from ..errors import ModelFolderError

log = logging.getLogger(__name__)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP's split: its special tokens, English contractions, letter runs, single digits, punctuation runs.
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"tokenizer file {path} is not readable JSON ({exc}); restore the file") from exc


def _vocab_and_merges(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    if (folder / "tokenizer.json").is_file():
        model = _read_json(folder / "tokenizer.json").get("model", {})
        if model.get("type") != "BPE":
            raise ModelFolderError(f"{folder / 'tokenizer.json'} holds a {model.get('type')} model, not CLIP's BPE tokenizer")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        return dict(model["vocab"]), merges  # type: ignore[return-value]
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return BPE.read_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    raise ModelFolderError(
        f"tokenizer folder {folder} holds neither tokenizer.json nor vocab.json + merges.txt (an SD1.5 CLIP tokenizer)"
    )


def _pad_token(folder: Path) -> str:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            pad = _read_json(folder / name).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if isinstance(pad, str):
                return pad
    return EOS


class ClipTokenizer:
    """Prompts → (B, max_length) int64 ids: truncated to ``max_length`` with a warning, padded."""

    def __init__(self, folder: Path, max_length: int) -> None:
        vocab, merges = _vocab_and_merges(folder)
        pad = _pad_token(folder)
        for token in (BOS, EOS, pad):
            if token not in vocab:
                raise ModelFolderError(f"tokenizer in {folder} lacks the token {token!r}; it is not a CLIP tokenizer")
        tok = Tokenizer(
            BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                end_of_word_suffix=END_OF_WORD, fuse_unk=False, unk_token=EOS)
        )
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys((BOS, EOS, pad))])
        tok.post_processor = processors.RobertaProcessing((EOS, vocab[EOS]), (BOS, vocab[BOS]), trim_offsets=False, add_prefix_space=False)
        tok.enable_truncation(max_length)
        tok.enable_padding(length=max_length, pad_id=vocab[pad], pad_token=pad)
        self._tokenizer = tok
        self.max_length = max_length

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens left out."""
        return self._tokenizer.decode(list(ids)).replace(END_OF_WORD, " ").strip()

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(list(prompts))
        for enc in encodings:
            if enc.overflowing:
                log.warning(
                    "prompt is longer than the %d tokens CLIP reads, so it was truncated after: %r",
                    self.max_length, self.decode(enc.ids),
                )
        return np.array([enc.ids for enc in encodings], dtype=np.int64)
