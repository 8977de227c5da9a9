"""What the runtime writes for people and other tools: A1111's PNG parameters (``pngmeta``, read
in linear time by ``infotext``), image outputs (``outputs``) and ``<lora:…>`` prompt tags with their
short hashes (``lora_tags``).

Imports the core modules, ``request``, ``files``, ``sampling`` (sampler names) and ``modelfiles``.
"""
