"""Stand-in for ``comfy.utils.ProgressBar``: records updates."""

updates = []


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current = total, 0

    def update_absolute(self, value, total=None, preview=None):
        self.current = value
        updates.append((value, total or self.total))

    def update(self, value):
        self.update_absolute(self.current + value)


def load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False):
    """Same signature as ComfyUI v0.21 (safetensors or torch pickle)."""
    import torch
    if str(ckpt).lower().endswith((".safetensors", ".sft")):
        from safetensors.torch import load_file
        sd = load_file(str(ckpt), device=str(device or "cpu"))
    else:
        sd = torch.load(ckpt, map_location=device or "cpu", weights_only=True)
    return (sd, None) if return_metadata else sd
