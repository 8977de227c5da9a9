"""Prompt encoding: CLIP tokenizer + the text_encoder engine (sequence states and pooled output)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .tokenizer import ClipTokenizer

if TYPE_CHECKING:
    from ..backends.base import Backend


class PromptEncoder:
    def __init__(self, tokenizer_dir: Path, backend: "Backend") -> None:
        self.backend = backend
        self.max_length = backend.dims.text_len
        self.tokenizer = ClipTokenizer(tokenizer_dir, self.max_length)

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), 77) int64 ids; prompts over 77 tokens are truncated with a warning."""
        return self.tokenizer(prompts)

    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(sequence states (B,77,C), pooled (B,C))."""
        out = self.backend.run("text_encoder", {"input_ids": self.tokenize(prompts)})
        return out["last_hidden_state"], out["pooled"]

    def pooled(self, prompts: Sequence[str]) -> np.ndarray:
        return self.encode(prompts)[1]
