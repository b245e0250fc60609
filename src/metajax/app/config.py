"""Experiment configs: ``metajax train --config FILE.yaml``, a protocol's flags in a file.

A config is a YAML mapping of ``metajax train`` flags (``meta-batch: 32`` or
``meta_batch: 32``; ``true`` for a switch such as ``no-progress``) and an optional
``reference`` mapping that ``metajax train`` does not read (``paper``: the published figure,
``reduced-steps``: the meta-steps of a run on a CPU; ``scripts/reproduce_fewshot.py`` uses
them). The file's flags come first, so flags given on the command line override them.
The paper protocols are in ``configs/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from metajax.app.errors import CommandError

REFERENCE = "reference"


def read(path: Path) -> dict[str, Any]:
    """The mapping in config ``path``, refused with the file named if it is not one."""
    import yaml

    try:
        text = path.read_text()
    except OSError as error:
        raise CommandError(f"--config {path}: {error.strerror or error}.") from error
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CommandError(f"--config {path} is not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(content, dict):
        raise CommandError(f"--config {path} must hold a mapping of flags to values, got {type(content).__name__}.")
    return content


def _tokens(path: Path, parser: argparse.ArgumentParser) -> list[str]:
    """Command-line tokens of the flags in config ``path``, checked against ``parser``'s options."""
    known = {a.dest: a for a in parser._actions if a.option_strings}
    tokens: list[str] = []
    for key, value in read(path).items():
        if key == REFERENCE:
            continue
        name = str(key).replace("-", "_")
        if name not in known or name in ("config", "help"):
            raise CommandError(f"--config {path}: {key!r} is not a flag of metajax train (see metajax train --help).")
        option = known[name].option_strings[-1]
        if known[name].nargs == 0:  # a switch (store_true)
            if not isinstance(value, bool):
                raise CommandError(f"--config {path}: {key} is a switch; expected true or false, got {value!r}.")
            tokens += [option] if value else []
        elif isinstance(value, (dict, list)) or value is None:
            raise CommandError(f"--config {path}: {key} needs one value, got {value!r}.")
        else:
            tokens += [option, str(value)]
    return tokens


def expand(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` of ``metajax train`` with its ``--config FILE``'s flags inserted after ``train``.

    ``parser`` is the ``train`` sub-parser. Other commands' ``argv`` is returned unchanged.
    """
    command = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if command is None or argv[command] != "train":
        return argv
    rest = argv[command + 1 :]
    paths = [rest[i + 1] for i, t in enumerate(rest[:-1]) if t == "--config"]
    paths += [t.split("=", 1)[1] for t in rest if t.startswith("--config=")]
    if len(paths) > 1:
        raise CommandError(f"--config is given {len(paths)} times ({', '.join(paths)}); pass one file.")
    inserted = _tokens(Path(paths[0]), parser) if paths else []
    return [*argv[: command + 1], *inserted, *rest]
