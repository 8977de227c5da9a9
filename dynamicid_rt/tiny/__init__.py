"""The tiny bundle: random weights in the real formats and layouts (SD1.5 diffusers folder, CLIP
image encoder, DynamicID checkpoints, insightface-shaped face models, sample portraits), so tests,
the demo and a first run work without downloading anything.

Imports the core modules, ``files``, ``modelfiles``, ``models`` and ``identity`` (face analysis).
"""
