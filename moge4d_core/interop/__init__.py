"""Adapters to ComfyUI's data formats (native ``MODEL`` / ``VAE`` / ``CONDITIONING`` / ``SAMPLER``), duck-typed:
nothing here imports ComfyUI. The nodes call these; the core pipeline works without them."""
