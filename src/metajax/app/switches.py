"""Reading the environment variables that turn the application's process-wide settings off."""

from __future__ import annotations

import os


def switch(name: str, on: str, meaning: str) -> str:
    """Environment variable ``name`` as a two-way switch: ``on`` (the default, doing ``meaning``) or ``"default"``.

    Raises:
      ValueError: ``name`` holds another value (the message names the variable and both values).
    """
    choice = os.environ.get(name, on)
    if choice not in (on, "default"):
        raise ValueError(f"{name}={choice!r}: expected {on!r} ({meaning}, the default) or 'default'")
    return choice
