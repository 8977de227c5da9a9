"""Prompt encoding: CLIP tokenizer + the text_encoder engine (sequence states and pooled output)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import ModelFolderError

if TYPE_CHECKING:
    from .backends.base import Backend

log = logging.getLogger(__name__)


class PromptEncoder:
    def __init__(self, tokenizer_dir: Path, backend: "Backend") -> None:
        from transformers import CLIPTokenizer

        if not (tokenizer_dir / "vocab.json").is_file():
            raise ModelFolderError(f"tokenizer folder {tokenizer_dir} lacks vocab.json/merges.txt (an SD1.5 CLIP tokenizer)")
        self.tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
        self.backend = backend
        self.max_length = backend.dims.text_len

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), 77) int64 ids; prompts over 77 tokens are truncated with a warning."""
        full = self.tokenizer(list(prompts), truncation=False, add_special_tokens=True)["input_ids"]
        for prompt, ids in zip(prompts, full):
            if len(ids) > self.max_length:
                log.warning(
                    "prompt is %d tokens long; CLIP reads %d, so it was truncated after: %r",
                    len(ids), self.max_length, self.tokenizer.decode(ids[1 : self.max_length - 1]),
                )
        out = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="np"
        )
        return out["input_ids"].astype(np.int64)

    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(sequence states (B,77,C), pooled (B,C))."""
        out = self.backend.run("text_encoder", {"input_ids": self.tokenize(prompts)})
        return out["last_hidden_state"], out["pooled"]

    def pooled(self, prompts: Sequence[str]) -> np.ndarray:
        return self.encode(prompts)[1]
