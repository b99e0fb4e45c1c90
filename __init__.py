"""MoGe4D for ComfyUI: node pack entry point.

ComfyUI imports this package from ``custom_nodes/`` and calls :func:`comfy_entrypoint` (V3 API).
There is deliberately no ``NODE_CLASS_MAPPINGS``: ComfyUI would then ignore ``comfy_entrypoint``
and silently drop every V3 node. Importing this file outside ComfyUI does nothing heavy.
"""


async def comfy_entrypoint():
    from .nodes import MoGe4DExtension

    return MoGe4DExtension()
