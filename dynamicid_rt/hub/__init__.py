"""Real models from the Hugging Face Hub: which repos and files the runtime reads (``sources``),
getting them into the standard HF cache with sizes, disk and licence checks first (``fetch``), and
the model folder made from them (``pull``; ``dynamicid-rt models pull``).

Imports the core modules and ``modelfiles``; huggingface_hub loads only when a pull runs.
"""
