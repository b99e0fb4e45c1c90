"""User-facing errors.

Every error a user can trigger with bad input (a wrong file, a wrong shape, an unknown preset) is raised
as :class:`MoGe4DInputError` with a message that names the input, says what was expected and what to do.
Nodes let it propagate unchanged, so ComfyUI shows the message instead of a deep stack trace.
"""
from __future__ import annotations


class MoGe4DInputError(ValueError):
    """Bad user input: the message names the input, what was found and what was expected."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`MoGe4DInputError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise MoGe4DInputError(message)
