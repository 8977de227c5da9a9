"""The UNet as the samplers' denoiser: its inputs per request and per step (``unet_feed``) and
classifier-free guidance over the backend's UNet (``guided_unet``), and the picture img2img and
inpainting start from, through the ``vae_encoder`` engine, with the final composite (``start_image``).

Imports the core modules, ``request``, ``backends`` and ``identity`` (the people's tokens).
"""
