"""The nano model's world: synthetic scenes (:mod:`training.datasets.synthetic`) whose objects move in a direction
set by their colour, larger and travelling further than the generator's defaults.

The nano model has no text encoder, so the motion must be predictable from the first frame alone: with the
generator's random directions only the caption says where an object goes, and an image-only model cannot do better
than the mean (no motion). :class:`ColourCodedObjects` fixes each object's translation direction by its colour
name (the kind of motion stays random) and scales the objects' sizes; small objects leave an 8×-strided motion
latent no room (``benchmarks/RESULTS.md``, nano section).

    python -m training.nano.data --out DATA/train --count 400 --seed 100      # the recipe's training set
    python -m training.nano.data --out DATA/heldout --count 16 --seed 7       # the held-out set of the figures
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from moge4d_core.errors import require

from ..datasets.synthetic import ObjectRule, SyntheticSample, make_synthetic_sample, write_synthetic_dataset

__all__ = ["COLOUR_DIRECTIONS", "ColourCodedObjects", "NANO_SCENES", "nano_sample", "write_nano_dataset", "main"]

COLOUR_DIRECTIONS = {
    "red": (1.0, 0.0, 0.0), "blue": (0.0, -0.4, 0.0), "green": (-1.0, 0.0, 0.0), "yellow": (0.0, 0.4, 0.0),
    "purple": (0.0, 0.0, 0.8), "orange": (0.0, 0.0, -0.8), "white": (0.7, -0.28, 0.0), "cyan": (-0.7, -0.28, 0.0),
}
"""Translation direction per colour name (x right, y down, z forward; metres over the clip before the speed draw)."""


@dataclass(frozen=True)
class ColourCodedObjects(ObjectRule):
    """Each object translates along :data:`COLOUR_DIRECTIONS` of its colour times a speed drawn in [0.8, 1]
    (drawn after, and instead of, the generator's random velocity), and its size is multiplied by ``object_scale``."""

    object_scale: float = 1.0

    def __post_init__(self) -> None:
        require(np.isfinite(self.object_scale) and self.object_scale > 0,
                f"nano data: object_scale must be a finite number > 0, got {self.object_scale}")

    def velocity(self, rng: np.random.Generator, colour: str, drawn: np.ndarray) -> np.ndarray:
        return np.asarray(COLOUR_DIRECTIONS[colour]) * float(rng.uniform(0.8, 1.0))

    def size(self, drawn: float) -> float:
        return drawn * self.object_scale

    def describe(self) -> dict:
        return {"motion_rule": "by_colour", "object_scale": float(self.object_scale)}


NANO_SCENES = dict(height=64, width=96, frames=17, novel_view="source", motion_scale=8.0,
                   objects=ColourCodedObjects(object_scale=3.0))
"""The nano recipe's generator settings (96×64, 17 frames, same-view render triplets for the ViSM)."""


def nano_sample(index: int, *, seed: int, **overrides) -> SyntheticSample:
    """Scene ``index`` of the nano world's stream ``seed`` (:data:`NANO_SCENES`, ``overrides`` replace entries)."""
    return make_synthetic_sample(index, seed=seed, **{**NANO_SCENES, **overrides})


def write_nano_dataset(out, count: int, *, seed: int, tar: bool = False, **overrides) -> list:
    """:func:`~training.datasets.synthetic.write_synthetic_dataset` with :data:`NANO_SCENES` (``overrides`` replace
    entries, e.g. a smaller size for tests)."""
    return write_synthetic_dataset(out, count, seed=seed, tar=tar, **{**NANO_SCENES, **overrides})


def main(argv: Optional[list[str]] = None) -> int:
    """The generator's command line with :data:`NANO_SCENES` as its defaults."""
    from ..datasets.synthetic import main as synthetic_main

    kw = {k: v for k, v in NANO_SCENES.items() if k != "objects"}
    return synthetic_main(argv, prog="python -m training.nano.data", description=__doc__,
                          objects=NANO_SCENES["objects"], **kw)


if __name__ == "__main__":
    raise SystemExit(main())
