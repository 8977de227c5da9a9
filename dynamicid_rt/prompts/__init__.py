"""Prompts to text embeddings: CLIP's tokenizer (``tokenizer``) and the text encoder run through a
backend (``encoder``), for the image prompt and the face prompts alike.

Imports the core modules and ``backends``' interface.
"""
