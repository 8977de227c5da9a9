"""Model files as they lie on disk: the model folder's parts (``paths``), checkpoint readers
(``checkpoints``), weight-file checks (``weightcheck``), fingerprints of the sources
(``fingerprint``), the A1111 model hash (``model_hash``) and user LoRA files (``lora``).

Reads files; never builds a model. Imports the core modules and ``files``.
"""
