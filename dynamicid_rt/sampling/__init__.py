"""The numpy sampler: noise schedules (``schedules``), the samplers as small pure functions over a
denoiser (``samplers``; LCM and TCD in ``fewstep``), their names as A1111 and diffusers spell them
(``names``), per-image noise streams (``noise``) and the live preview of a latent (``preview``).

Imports only the core modules (``errors``): no backend, no model, no torch.
"""
