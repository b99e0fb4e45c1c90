"""Stand-in for ``comfy.model_patcher.ModelPatcher`` (same constructor keywords as ComfyUI v0.21)."""


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        self.load_device, self.offload_device = load_device, offload_device
        if not hasattr(self.model, "device"):
            self.model.device = offload_device
        elif self.model.device is None:
            self.model.device = offload_device
        self.loaded = False

    def model_dtype(self):
        return next(self.model.parameters()).dtype

    def patch_model(self, device_to=None):
        self.model.to(device_to or self.load_device)
        self.model.device = device_to or self.load_device   # as the real one does: fails on read-only properties
        self.loaded = True
        return self.model
