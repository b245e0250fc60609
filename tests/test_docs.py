"""docs/errors.md: every row's "try it" command or call gives its error; every row names a test that checks it.

A row's "try it" cell holds, where the bad input needs no files or earlier run, command
lines (``metajax train --steps 0 --out DIR``; ``DIR`` is a fresh folder) run in-process
through :func:`metajax.app.cli.main`, and Python calls (of ``metajax``, ``jax``, ``jnp``,
``np``) that are evaluated: each must fail (a command with exit status 2) with the text of
one of the row's error spans, its pieces between placeholders in order. Rows without one
need files or state; the flags (``--resume``) their bad-input cell names (outside an
"(e.g. ...)" example) must then be passed by the named test, as words or by their Python
names (``inner_lr=``).

For each row, every backticked span of the error column is an exception type (``ValueError``),
a message (``metajax train: --steps must ...``) or both (``ValueError: shots must ...``). The test
named in the last column (``same``: the row above's; a bare file: any test in it) must, in its
source (decorators included, so parametrized messages count) or in a module-level helper or
constant of its file that it uses:

* check an error: call ``pytest.raises`` / ``pytest.warns``, or assert on a ``returncode``,
  ``SystemExit`` or a captured ``error`` / ``err`` / ``stderr``;
* name the exception type of the span (``SystemExit`` may instead be checked as a ``returncode``);
* hold, in one string literal, a run of at least ``MIN_RUN`` consecutive words of the message
  (the whole piece, if the longest piece of literal words is shorter), taken between
  placeholders (``...``, ``<dir>``, ``DIR``, ``N``), with at least one distinctive word: not a
  number, not a common word, and in the error column of at most ``MAX_ROWS`` rows of the table
  (so "must be a positive integer" alone does not tell ``--steps`` from ``inner_steps``).
  Words are ``\\w+`` runs, so punctuation and regex escapes do not matter.
"""

from __future__ import annotations

import ast
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ERRORS = ROOT / "docs" / "errors.md"
MIN_RUN = 3
MAX_ROWS = 3  # a flag named in up to 3 rows (its own, a resume row, a bound row) still tells rows apart
_EXCEPTION = re.compile(r"([A-Z]\w*(?:Error|Warning|Exit|Exception))\b:?\s*")
_PLACEHOLDER = re.compile(r"\.\.\.|…|<[^>]*>|\bDIR\b|\bN\b")
_CAPTURED_ERROR = re.compile(r"(std)?err(or)?s?")
_COMMON = frozenset(
    "a an and any are as at be by can for from got has have in is it its".split()
    + "must no not of on one or the to was with".split()
)


def _rows() -> list[tuple[int, str, str, list[str], list[str]]]:
    """``(line number, bad input, error cell, tries, test references)`` of every table row, ``same`` resolved."""
    rows, refs = [], None
    for number, line in enumerate(ERRORS.read_text().splitlines(), 1):
        if not line.startswith("| ") or line.startswith(("| bad input |", "| ---")):
            continue
        cells = [c.strip() for c in line.strip()[1:-1].split(" | ")]
        assert len(cells) == 4, f"docs/errors.md:{number}: expected 4 columns: {line}"
        bad, error, tries, test = cells
        assert test == "same" or test.startswith("`"), f"docs/errors.md:{number}: {line}"
        if test != "same":
            refs = re.findall(r"`([^`]+)`", test)
        assert refs, f"docs/errors.md:{number}: 'same' with no row above"
        rows.append((number, bad, error, re.findall(r"`([^`]+)`", tries), refs))
    return rows


def test_every_error_row_names_an_existing_test():
    rows = _rows()
    assert len(rows) >= 30
    missing = []
    for *_, refs in rows:
        for ref in refs:
            path, _, name = ref.partition("::")
            file = ROOT / "tests" / path
            if not file.is_file() or (name and f"def {name}(" not in file.read_text()):
                missing.append(ref)
    assert not missing, f"docs/errors.md names tests that do not exist: {missing}"


# ----------------------------------------------------------------------------- does the test check it?


@cache
def _module(path: str) -> dict[str, list[ast.AST]]:
    """The top-level definitions of a test file by name (functions, classes, assigned constants)."""
    tree = ast.parse((ROOT / "tests" / path).read_text())
    top: dict[str, list[ast.AST]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            top.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        top.setdefault(name.id, []).append(node)
    return top


def _with_helpers(path: str, test: ast.AST) -> list[ast.AST]:
    """``test`` and, transitively, every top-level helper or constant of its file it refers to."""
    top, seen, todo = _module(path), [], [test]
    while todo:
        node = todo.pop()
        if any(node is s for s in seen):
            continue
        seen.append(node)
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in top and not sub.id.startswith("test_"):
                todo.extend(top[sub.id])
    return seen


def _candidates(ref: str) -> list[tuple[str, list[ast.AST]]]:
    """``(name, nodes)`` of the test a reference names, or of every test of a file named alone."""
    path, _, name = ref.partition("::")
    if not (ROOT / "tests" / path).is_file():
        return []
    top = _module(path)
    names = [name] if name else [n for n in top if n.startswith("test_")]
    return [(f"{path}::{n}", _with_helpers(path, node)) for n in names for node in top.get(n, [])]


def _docstrings(nodes: list[ast.AST]) -> set[int]:
    out = set()
    for node in nodes:
        for sub in ast.walk(node):
            body = getattr(sub, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                value = body[0].value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    out.add(id(value))
    return out


def _literals(nodes: list[ast.AST]) -> list[list[str]]:
    """The words of each string literal (f-string pieces included, docstrings excluded)."""
    skip = _docstrings(nodes)
    return [
        re.findall(r"\w+", sub.value)
        for node in nodes
        for sub in ast.walk(node)
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and id(sub) not in skip
    ]


def _identifiers(nodes: list[ast.AST]) -> set[str]:
    return {
        sub.id if isinstance(sub, ast.Name) else sub.attr
        for node in nodes
        for sub in ast.walk(node)
        if isinstance(sub, ast.Name | ast.Attribute)
    }


def _keywords(nodes: list[ast.AST]) -> set[str]:
    """The keyword-argument names of every call in ``nodes``."""
    return {sub.arg for node in nodes for sub in ast.walk(node) if isinstance(sub, ast.keyword) and sub.arg}


def _checks_an_error(nodes: list[ast.AST]) -> bool:
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
                f = sub.func
                if f.attr in ("raises", "warns") and isinstance(f.value, ast.Name) and f.value.id == "pytest":
                    return True
            if isinstance(sub, ast.Assert):
                names = _identifiers([sub.test])
                if "returncode" in names or "SystemExit" in names or any(_CAPTURED_ERROR.fullmatch(n) for n in names):
                    return True
    return False


def _shared_runs(pieces: list[list[str]], literals: list[list[str]]) -> list[list[str]]:
    """Every run of consecutive words of one message piece found in one string literal, not extendable."""
    runs = []
    for piece in pieces:
        for words in literals:
            for i in range(len(piece)):
                for j in range(len(words)):
                    if i and j and piece[i - 1] == words[j - 1]:
                        continue  # inside a longer run
                    k = 0
                    while i + k < len(piece) and j + k < len(words) and piece[i + k] == words[j + k]:
                        k += 1
                    if k:
                        runs.append(piece[i : i + k])
    return runs


@cache
def _rows_using() -> dict[str, int]:
    """How many rows of the table use each (lower-cased) word in their error column."""
    counts: dict[str, int] = {}
    for _, _, error, _, _ in _rows():
        for word in {w.lower() for span in re.findall(r"`([^`]+)`", error) for w in re.findall(r"\w+", span)}:
            counts[word] = counts.get(word, 0) + 1
    return counts


def _distinctive(words: list[str]) -> bool:
    counts = _rows_using()
    return any(w.lower() not in _COMMON and not w.isdigit() and counts.get(w.lower(), 0) <= MAX_ROWS for w in words)


def _problem(span: str, nodes: list[ast.AST]) -> str | None:
    """Why the test made of ``nodes`` does not check the documented error ``span``; ``None`` if it does."""
    if not _checks_an_error(nodes):
        return "no pytest.raises / pytest.warns or assertion on a returncode, SystemExit or error output"
    kind = _EXCEPTION.match(span)
    message = span[kind.end() :] if kind else span
    if kind:
        names = _identifiers(nodes)
        if kind[1] not in names and not (kind[1] == "SystemExit" and "returncode" in names):
            return f"does not name {kind[1]}"
    pieces = [re.findall(r"\w+", piece) for piece in _PLACEHOLDER.split(message)]
    longest = max(map(len, pieces))
    if longest == 0:
        return None if kind else "the span names neither an exception nor a message"
    need = min(MIN_RUN, longest)
    runs = _shared_runs(pieces, _literals(nodes))
    if any(len(run) >= need and _distinctive(run) for run in runs):
        return None
    return (
        f"no string literal holds {need} consecutive words of the message with a distinctive one "
        f"(longest shared run: {max(runs, key=len, default=[])})"
    )


@pytest.mark.parametrize(
    ("bad", "error", "refs"),
    [pytest.param(bad, error, refs, id=f"line{number}") for number, bad, error, _, refs in _rows()],
)
def test_named_test_checks_the_documented_error(bad, error, refs):
    spans = re.findall(r"`([^`]+)`", error)
    assert spans, f"{bad!r}: the error column has no backticked exception or message: {error}"
    candidates = [c for ref in refs for c in _candidates(ref)]
    assert candidates, f"{bad!r}: {refs} name no test function"
    unchecked = {}
    for span in spans:
        problems = {name: _problem(span, nodes) for name, nodes in candidates}
        if all(problems.values()):
            # Of a file named alone, report only its tests that check some error.
            unchecked[span] = {n: p for n, p in problems.items() if len(candidates) == 1 or "no pytest" not in p}
    assert not unchecked, f"{bad!r}: the named test does not check {unchecked}"


# ----------------------------------------------------------------------------- does the row's try-it give it?


def _tried(text: str, folder: Path, capsys) -> str:
    """The error a "try it" command line or Python call gives: ``metajax``'s stderr, or ``Type: message``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import metajax
    from metajax.app import cli

    if text.startswith("metajax "):
        argv = [str(folder) if word == "DIR" else word for word in shlex.split(text)[1:]]
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2, f"{text}: exit status {info.value.code}, expected 2; stderr: {err}"
        return err
    with pytest.raises(Exception) as info:  # noqa: PT011 - any exception; its text is checked below
        eval(text, {"metajax": metajax, "jax": jax, "jnp": jnp, "np": np})  # noqa: S307 - the docs' own calls
    error = info.value
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return f"{type(error).__name__}: {message}"


def _gives(span: str, got: str) -> bool:
    """Whether ``got`` holds the span's exception type (if any) and its pieces between placeholders, in order."""
    kind = _EXCEPTION.match(span)
    if kind and not got.startswith(kind[1] + ":"):
        return False
    at = 0
    for piece in _PLACEHOLDER.split(span[kind.end() :] if kind else span):
        found = got.find(piece.strip(), at)
        if found < 0:
            return False
        at = found + len(piece.strip())
    return True


@pytest.mark.parametrize(
    ("error", "tries"),
    [pytest.param(error, tries, id=f"line{number}") for number, _, error, tries, _ in _rows() if tries],
)
def test_try_it_gives_the_documented_error(error, tries, tmp_path, capsys):
    spans = re.findall(r"`([^`]+)`", error)
    for i, text in enumerate(tries):
        got = _tried(text, tmp_path / f"run{i}", capsys)
        assert any(_gives(span, got) for span in spans), f"{text} gave {got!r}, none of {spans}"


def _strings(nodes: list[ast.AST]) -> str:
    """Every string literal of ``nodes``, docstrings excluded, joined by newlines."""
    skip = _docstrings(nodes)
    return "\n".join(
        sub.value
        for node in nodes
        for sub in ast.walk(node)
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and id(sub) not in skip
    )


@pytest.mark.parametrize(
    ("bad", "refs"),
    [pytest.param(bad, refs, id=f"line{number}") for number, bad, _, tries, refs in _rows() if not tries],
)
def test_named_test_passes_the_flags_of_the_bad_input(bad, refs):
    trigger = re.sub(r"\(e\.g\. [^)]*\)", "", bad)  # an example of how it arises is not the trigger
    flags = {f for span in re.findall(r"`([^`]+)`", trigger) for f in re.findall(r"--[a-z][\w-]*", span)}
    nodes = [node for ref in refs for _, found in _candidates(ref) for node in found]
    passed, names = _strings(nodes), _identifiers(nodes) | _keywords(nodes)

    def given(flag: str) -> bool:  # as a command-line word, or by its Python name (inner_lr=...)
        return bool(re.search(re.escape(flag) + r"\b(?!-)", passed)) or flag[2:].replace("-", "_") in names

    missing = sorted(f for f in flags if not given(f))
    assert not missing, f"{bad!r}: the named test {refs} never passes {missing}"
