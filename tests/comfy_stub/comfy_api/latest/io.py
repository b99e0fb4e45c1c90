"""Stand-in for ``comfy_api.latest.io``: schema classes that record what nodes declare."""
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class ControlAfterGenerate(str, Enum):
    fixed = "fixed"
    increment = "increment"
    decrement = "decrement"
    randomize = "randomize"


class _Input:
    _extra: tuple = ()

    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None,
                 raw_link=None, advanced=None, **kw):
        unknown = set(kw) - set(self._extra)
        if unknown:
            raise TypeError(f"{type(self).__qualname__}: unexpected keyword arguments {sorted(unknown)}")
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
        self.advanced = advanced
        self.__dict__.update(kw)

    @property
    def io_type(self):
        return self._io_type


class _Output:
    def __init__(self, id=None, display_name=None, tooltip=None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list

    @property
    def io_type(self):
        return self._io_type


def _make(io_type, extra=(), output_extra=()):
    class Input(_Input):
        _io_type = io_type
        _extra = tuple(extra)

    class Output(_Output):
        _io_type = io_type

        def __init__(self, id=None, display_name=None, tooltip=None, is_output_list=False, **kw):
            unknown = set(kw) - set(output_extra)
            if unknown:
                raise TypeError(f"Output: unexpected keyword arguments {sorted(unknown)}")
            super().__init__(id, display_name, tooltip, is_output_list)

    ns = type(io_type, (), {"Input": Input, "Output": Output, "io_type": io_type})
    return ns


_WIDGET = ("default", "socketless", "force_input")
Boolean = _make("BOOLEAN", _WIDGET + ("label_on", "label_off"))
Int = _make("INT", _WIDGET + ("min", "max", "step", "control_after_generate", "display_mode"))
Float = _make("FLOAT", _WIDGET + ("min", "max", "step", "round", "display_mode", "gradient_stops"))
String = _make("STRING", _WIDGET + ("multiline", "placeholder", "dynamic_prompts"))
Combo = _make("COMBO", ("options", "default", "control_after_generate", "upload", "image_folder", "remote",
                        "socketless"), output_extra=("options",))
Image = _make("IMAGE", ("default", "socketless"))
Mask = _make("MASK", ("default", "socketless"))
Latent = _make("LATENT")
Conditioning = _make("CONDITIONING")
Video = _make("VIDEO")
Tracks = _make("TRACKS")
Load3DCamera = _make("LOAD3D_CAMERA")
File3DAny = _make("FILE_3D")
Model = _make("MODEL")
Vae = _make("VAE")
ClipVisionOutput = _make("CLIP_VISION_OUTPUT")
Sampler = _make("SAMPLER")
Sigmas = _make("SIGMAS")


def Custom(io_type):
    return _make(io_type)


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    search_aliases: list = field(default_factory=list)
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_dev_only: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand=None, block_execution=None):
        self.args, self.ui = args, ui

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, i):
        return self.args[i]


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs):
        """Placeholder, as in ComfyUI: only an override in a node class is called."""
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        raise NotImplementedError
