"""A small working CLIP BPE tokenizer for the tiny bundle (no downloads).

Same file formats and conventions as the real CLIP tokenizer: byte-level symbols with and without
the end-of-word suffix ``</w>``, merges learnt from a few English words, ``<|startoftext|>`` and
``<|endoftext|>`` as the two last ids (end-of-text the highest, which the text encoder relies on to
find the pooled token), padding with end-of-text, 77 tokens.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77
END_OF_WORD = "</w>"

# Words the merges are learnt from: the prompts the runtime writes itself and common photo prompts.
_CORPUS = (
    "a an the of in on at with and photo portrait picture of a person man woman girl boy child old young "
    "in a neutral happy sad angry surprised fearful disgusted contempt expression facing up down left right "
    "front side view wearing red blue green black white shirt hat glasses dress suit smiling looking camera "
    "standing sitting walking street park beach city forest mountain sunset night light studio high quality "
    "detailed realistic best two three people friends together cinematic lighting background close face "
    "hair long short beautiful handsome film grain sharp focus professional color is are was"
)
_NUM_MERGES = 300


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level alphabet of GPT-2/CLIP: printable bytes map to themselves, the others to
    unused code points above 255, so every byte is one visible symbol."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _learn_merges(words: list[str], count: int) -> list[tuple[str, str]]:
    """Greedy BPE on the word list; ties are broken by the pair itself so the result is deterministic."""
    freq = Counter(words)
    splits = {w: list(w[:-1]) + [w[-1] + END_OF_WORD] for w in freq}
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: Counter = Counter()
        for word, symbols in splits.items():
            for a, b in zip(symbols, symbols[1:]):
                pairs[(a, b)] += freq[word]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, symbols in splits.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = merged
    return merges


def build_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (symbol -> id) and the merge list, in CLIP's order."""
    alphabet = list(_bytes_to_unicode().values())
    merges = _learn_merges(_CORPUS.split(), _NUM_MERGES)
    tokens = alphabet + [s + END_OF_WORD for s in alphabet]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into
    ``folder`` (created if needed); transformers' CLIPTokenizer loads the folder. Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder
