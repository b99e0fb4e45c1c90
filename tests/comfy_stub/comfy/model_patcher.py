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
        self.patches = {}

    def model_dtype(self):
        return next(self.model.parameters()).dtype

    def patch_model(self, device_to=None):
        self.model.to(device_to or self.load_device)
        self.model.device = device_to or self.load_device   # as the real one does: fails on read-only properties
        self.loaded = True
        return self.model

    # LoRA patching (same method signatures as ComfyUI v0.21)
    def clone(self, disable_dynamic=False, model_override=None):
        n = ModelPatcher.__new__(ModelPatcher)
        n.__dict__.update(self.__dict__)
        n.patches = {k: list(v) for k, v in getattr(self, "patches", {}).items()}
        return n

    def model_state_dict(self, filter_prefix=None):
        sd = self.model.state_dict()
        return {k: v for k, v in sd.items() if filter_prefix is None or k.startswith(filter_prefix)}

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        if not hasattr(self, "patches"):
            self.patches = {}
        model_sd = self.model.state_dict()
        p = set()
        for k in patches:
            if k in model_sd:
                p.add(k)
                self.patches.setdefault(k, []).append((strength_patch, patches[k], strength_model, None, None))
        return list(p)
