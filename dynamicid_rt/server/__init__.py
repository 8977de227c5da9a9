"""``dynamicid-rt serve``: the AUTOMATIC1111 web API (``/sdapi/v1/*``) over the public Pipeline API.

- :mod:`.command`: the ``serve`` sub-command (argument parsing only; imports nothing heavy).
- :mod:`.schema`: the request and response models (pydantic), i.e. the OpenAPI schema.
- :mod:`.uploads`: base64 photos and saved identities, size-capped and checked like the CLI's files.
- :mod:`.plan`: an A1111 txt2img request turned into checked :class:`dynamicid_rt.Request` objects.
- :mod:`.jobs`: one generation at a time per pipeline; the others wait in order.
- :mod:`.a1111`: A1111's response shapes (``info`` JSON, samplers, models, options).
- :mod:`.service`: one pipeline, its queue and the work of a txt2img job.
- :mod:`.app`: the FastAPI app (routes, errors, upload cap, HTTP Basic auth).
- :mod:`.ray_app`: the same app as a Ray Serve deployment (``serve --ray``).

FastAPI and uvicorn come with the ``[serve]`` extra, Ray Serve with ``[ray]``.
"""
