"""People: the ``Identity`` value and its file (``value``), photos read and checked (``photos``),
face analysis (``faces``), CLIP's preprocessing (``clip_preprocessing``), the encoder from photo to
identity tokens (``encoder``) with its cache (``cache``), the likeness check of a generated image
(``check``) and best-of-N generation ranked by it (``best_of``).

Imports the core modules, ``request``, ``files``, ``modelfiles``, ``backends`` and ``prompts``.
"""
