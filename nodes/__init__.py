"""ComfyUI V3 nodes of the MoGe4D pack: thin wrappers over ``moge4d_core`` (no maths here).

The pack's root ``__init__.py`` exposes ``comfy_entrypoint`` returning :class:`MoGe4DExtension`.
The core library is imported as the top-level package ``moge4d_core`` (the pack folder is put on
``sys.path`` once), so the same module objects serve the nodes, the CLI and the tests.
"""
from __future__ import annotations

import os
import sys

_PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _PACK_ROOT not in sys.path:
    sys.path.insert(0, _PACK_ROOT)

from comfy_api.latest import ComfyExtension, io  # noqa: E402

from .camera_nodes import CAMERA_NODES  # noqa: E402
from .encoder_nodes import ENCODER_NODES  # noqa: E402
from .export_nodes import EXPORT_NODES  # noqa: E402
from .nano_nodes import NANO_NODES  # noqa: E402
from .render_nodes import RENDER_NODES  # noqa: E402
from .scene_nodes import SCENE_NODES  # noqa: E402
from .strag_nodes import STRAG_NODES  # noqa: E402
from .vism_nodes import VISM_NODES  # noqa: E402

NODE_LIST: list[type[io.ComfyNode]] = [*SCENE_NODES, *CAMERA_NODES, *RENDER_NODES, *ENCODER_NODES, *STRAG_NODES,
                                       *VISM_NODES, *EXPORT_NODES, *NANO_NODES]


class MoGe4DExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)
