"""The numpy sampler: noise schedules (``schedules``), the samplers as small pure functions over a
denoiser (``samplers``; LCM and TCD in ``fewstep``), their names as A1111 and diffusers spell them
(``names``), per-image noise streams (``noise``), the live preview of a latent (``preview``), and
starting from a picture: img2img's partial schedule and inpainting's step rule (``img2img``), masks
and the boxes their regions give (``masks``), the start image's one-line checks (``start_image``).

Imports only the core modules (``errors``): no backend, no model, no torch.
"""
