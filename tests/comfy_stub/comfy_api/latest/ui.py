"""Stand-in for ``comfy_api.latest.ui``: records what a node shows."""


class PreviewImage:
    def __init__(self, image, animated: bool = False, cls=None, **kwargs):
        self.image, self.animated = image, animated

    def as_dict(self):
        return {"images": [tuple(self.image.shape)], "animated": (self.animated,)}


class PreviewUI3D:
    def __init__(self, model_file, camera_info, **kwargs):
        self.model_file, self.camera_info = model_file, camera_info

    def as_dict(self):
        return {"result": [self.model_file, self.camera_info]}


class PreviewText:
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self):
        return {"text": (self.value,)}
