"""Stand-in for ``comfy_api.latest`` (ComfyUI v0.21.0 surface used by the pack)."""
from abc import ABC

from . import io, ui  # noqa: F401


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        return None

    async def get_node_list(self):
        raise NotImplementedError


class Types:
    class File3D:
        def __init__(self, source, file_format: str = ""):
            self.source = source
            self.format = file_format or str(source).rsplit(".", 1)[-1]
