"""The command-line options that point single model parts elsewhere, shared by every command
that opens a model folder (``generate``, ``serve``, ``build-engines``, ``inspect``, ``doctor``),
so that no part is accepted by one command and unknown to another. argparse only."""
from __future__ import annotations

import argparse
from pathlib import Path

# (ModelPaths field, help)
PART_OPTIONS: tuple[tuple[str, str], ...] = (
    ("base", "the SD1.5 base: a diffusers folder (an SD1.5 fine-tune's repo) or a single-file .safetensors"),
    ("vae", "a separate VAE (diffusers folder or .safetensors)"),
    ("tokenizer", "CLIP tokenizer folder (a single-file base finds a tokenizer/ folder beside it)"),
    ("image_encoder", "CLIP ViT-H/14 image encoder folder (vision-only or a full CLIPModel, e.g. laion's)"),
    ("saa", "the SAA checkpoint (SAA.bin or .safetensors)"),
    ("projector", "the face projector, where the SAA file lacks it"),
    ("imr", "the IMR checkpoint (expression editing)"),
    ("keypoint_encoder", "the keypoint encoder checkpoint (with --imr)"),
)
MODELS_HELP = ("model folder holding base/, image_encoder/, dynamicid/ and insightface/ (`dynamicid-rt models pull` "
               "makes one); default $DYNAMICID_MODELS, else the tiny demo bundle")


def add_part_arguments(parser: argparse.ArgumentParser) -> None:
    for field, help_text in PART_OPTIONS:
        parser.add_argument(f"--{field.replace('_', '-')}", dest=field, type=Path, default=None, metavar="PATH", help=help_text)


def part_overrides(args: argparse.Namespace) -> dict[str, Path]:
    """The part options given, as ``ModelPaths`` / ``Pipeline.load`` keyword overrides."""
    return {field: getattr(args, field) for field, _ in PART_OPTIONS if getattr(args, field, None) is not None}
