"""Generate the performance tables of the README and docs/performance.md from committed JSON lines.

No figure in those tables is typed by hand: each table lives between two markers whose
opening names its source (a JSON-lines file written by ``metajax bench --out``, committed
under ``docs/results/``) and how to lay it out::

    <!-- table:NAME source=docs/results/FILE.jsonl kind=KIND [option=value ...] -->
    (generated; do not edit)
    <!-- /table:NAME -->

Kinds and their options:

* ``torch``: metajax against its PyTorch references, one row per shape measured with both
  (workload, image, Conv4 variant, shots, meta-batch, inner steps, ways, order): tasks/s of
  the JAX library default (else the fastest float32 JAX run without remat, as
  ``metajax.app.bench.ratios`` pairs them), of the task loop and of ``torch.func``, the
  ratios, and memory: XLA's planned temporaries of the JAX step and the peak resident
  memory over the post-set-up baseline of the JAX step and of the task loop.
* ``results``: one row per distinct value of the key columns, ``cols=a,b,...`` (fields of
  the result lines; ``a.b`` reaches into nested ones, e.g. ``xla_memory_mb.temporaries``).
* ``pivot``: ``rows=a,b cols=c value=field``: the values of ``field`` with a row per
  ``(a, b)`` and a column per ``c``.
* ``reproduce``: the lines of ``scripts/reproduce_fewshot.py``, one row each in file order:
  the protocol, the paper's figure, our test accuracy after the last test step (and
  before any, for learners that adapt), the meta-steps and minutes trained, the commit
  (``+`` when the tree had uncommitted changes) and the command that reruns it.
* ``eval``: ``source=a.json,b.json,...`` names ``metrics.json`` files of ``metajax train``
  (not JSON lines), one row each in that order: ``cols=config.algo,...`` (fields of the
  file), then ``metric=mse steps=1,10``: that metric's mean +- 95 % interval after each
  listed adaptation step (``-`` past the steps evaluated), with the count of non-finite
  tasks where there were any. A ``metrics.json`` of ``--seeds`` gives the mean over seeds and
  its t-interval across them, and counts the seeds whose mean was non-finite.

Every kind but ``eval`` takes ``where=field:value,field:v1|v2`` to keep only matching result lines.
A file may hold several runs (each starts with its ``machine`` line); a cell whose runs
disagree shows the range ``low-high``. Numbers: one decimal from 10 (two below), none and
thousands grouped from 1000; ratios as ``1.23x``; memory in MB (no decimal from 100).

Usage:
    python scripts/perf_tables.py              # print every table of README.md and docs/performance.md
    python scripts/perf_tables.py --write      # rewrite the regions between the markers
    python scripts/perf_tables.py --check      # exit 1 when a region differs from its JSON
    python scripts/perf_tables.py --check FILE.md ... [--root DIR]

Standard library only (no JAX import), so it runs in a second.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILES = ("README.md", "docs/performance.md")
MARKER = re.compile(r"<!-- table:(?P<name>[\w.-]+)(?P<attrs>[^>]*?)-->\n(?P<body>.*?)<!-- /table:(?P=name) -->", re.S)
# Must match metajax.app.bench.SHAPE_KEYS (tests/test_perf_tables.py checks it).
SHAPE_KEYS = ("workload", "image", "pool", "shots", "meta_batch", "inner_steps", "ways", "order")
TORCH_IMPLS = ("torch-loop", "torch-func")
LABELS = {
    "workload": "workload",
    "image": "images",
    "pool": "Conv4",
    "shots": "shots",
    "ways": "ways",
    "meta_batch": "meta-batch",
    "inner_steps": "inner steps",
    "order": "order",
    "task_batching": "batching",
    "conv_impl": "conv",
    "remat": "remat",
    "dtype": "dtype",
    "impl": "implementation",
    "tasks_per_s": "tasks/s",
    "ms_per_step": "ms/step",
    "compile_s": "compile (s)",
    "gflop_per_step": "GFLOP per step",
    "gflop_per_s": "GFLOP/s",
    "matmul_peak_gflop_per_s": "matmul peak (GFLOP/s)",
    "share_of_matmul_peak": "share of matmul peak",
    "xla_memory_mb.temporaries": "XLA temporaries (MB)",
    "peak_rss_mb": "peak RSS (MB)",
    "peak_rss_delta_mb": "peak RSS over baseline (MB)",
    "load_avg_1min": "load (1 min)",
    "test_accuracy": "test accuracy",
    "first_step_above_escape": "first step above chance",
    "meta_iterations_per_s": "meta-iterations/s",
    "env_steps_per_s": "environment steps/s",
    "accuracy_percent": "accuracy, %",
    "config.algo": "learner",
    "config.shots": "K",
    "config.inner_steps": "inner steps at training",
    "eval.num_seeds": "seeds",
    "train.steps": "meta-steps",
}
NAMES = {
    "maml-omniglot": "MAML",
    "maml-sinusoid": "MAML sinusoid",
    "protonet-omniglot": "ProtoNet",
    "matchingnet-omniglot": "Matching Networks",
    "transformer-omniglot": "Transformer",
    "snail-omniglot": "SNAIL",
    "feat-omniglot": "FEAT",
}
IMAGE_NAMES = {"omniglot": "Omniglot", "miniimagenet": "miniImageNet 84x84x3"}


class TableError(Exception):
    """A marker that cannot be rendered: bad options, a missing source, nothing to show."""


# ----------------------------------------------------------------------------- reading


def read_runs(path: Path) -> list[list[dict]]:
    """The runs of a JSON-lines file: lists of records, a new one at each ``machine`` line."""
    runs: list[list[dict]] = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError as e:
            raise TableError(f"{path}:{number} is not JSON: {e}") from None
        if record.get("kind") == "machine" or not runs:
            runs.append([])
        runs[-1].append(record)
    return runs


def read_metrics(path: Path) -> dict:
    """A ``metrics.json`` of ``metajax train`` (``config``, ``train``, ``eval``)."""
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise TableError(f"{path} is not JSON: {e}") from None
    if not isinstance(record, dict) or "eval" not in record:
        raise TableError(f"{path} is not a metajax train metrics.json (no 'eval')")
    return record


def field(record: dict, name: str):
    value = record
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _matches(record: dict, where: dict[str, list[str]]) -> bool:
    return all(str(field(record, k)) in values for k, values in where.items())


def _results(runs: list[list[dict]], where: dict[str, list[str]]) -> list[list[dict]]:
    return [[r for r in run if r.get("kind") == "result" and _matches(r, where)] for run in runs]


# ----------------------------------------------------------------------------- formatting


def fmt_number(name: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if name.startswith("share"):
        return f"{100 * value:.0f} %"
    if name in ("speedup", "ratio") or name.endswith("_ratio"):
        return f"{value:.2f}x"
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if "_mb" in name:  # memory in MB
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_range(name: str, values: Iterable) -> str:
    """One value, or ``low-high`` over repeated runs (as formatted)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "/".join(dict.fromkeys(str(v) for v in values))
    low, high = fmt_number(name, min(values)), fmt_number(name, max(values))
    return low if low == high else f"{low}-{high}"


def describe(shape: dict) -> str:
    """A workload's row label, e.g. ``MAML Omniglot 5w1s, second order, Conv4-64 max-pool, meta-batch 32``."""
    w = shape["workload"]
    if w == "maml-sinusoid":
        return f"MAML sinusoid (MLP 1-40-40-1, K=10, meta-batch {shape['meta_batch']})"
    image = IMAGE_NAMES.get(shape.get("image") or "omniglot", shape.get("image"))
    text = f"{NAMES.get(w, w)} {image} {shape['ways']}w{shape.get('shots') or 1}s"
    pool = shape.get("pool") or ("stride" if w == "maml-omniglot" else "max")
    filters = shape.get("filters") or (32 if shape.get("image") == "miniimagenet" else 64)
    conv = f"Conv4-{filters} {'max-pool' if pool == 'max' else 'stride-2'}"
    if w == "maml-omniglot":
        steps = shape["inner_steps"]
        text += f", {shape['order']} order, {conv}, meta-batch {shape['meta_batch']}"
        if steps != 1:
            text += f", {steps} inner steps"
        return text
    text += f", {conv}"
    return text if shape["meta_batch"] == 1 else f"{text}, meta-batch {shape['meta_batch']}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- kinds


def _shape(record: dict) -> tuple:
    return tuple(record.get(k) for k in SHAPE_KEYS)


def jax_default(run: Sequence[dict]) -> dict[tuple, dict]:
    """Per shape, the JAX record a reference is compared with (the rule of ``metajax.app.bench.ratios``)."""
    best: dict[tuple, tuple[bool, dict]] = {}
    for r in run:
        if r.get("impl") != "jax" or r.get("dtype") != "float32" or r.get("remat"):
            continue
        is_auto = r.get("task_batching_requested") == "auto" and r.get("conv_impl_requested") in ("auto", "none")
        old = best.get(_shape(r))
        if old is None or (is_auto and not old[0]) or (is_auto == old[0] and r["tasks_per_s"] > old[1]["tasks_per_s"]):
            best[_shape(r)] = (is_auto, r)
    return {k: v[1] for k, v in best.items()}


def torch_table(runs: list[list[dict]]) -> str:
    cells: dict[tuple, dict[str, list]] = {}
    labels: dict[tuple, str] = {}
    for run in runs:
        defaults = jax_default(run)
        refs = {(_shape(r), r["impl"]): r for r in run if r.get("impl") in TORCH_IMPLS}
        for shape, j in defaults.items():
            pair = {impl: refs.get((shape, impl)) for impl in TORCH_IMPLS}
            if not any(pair.values()):
                continue
            labels.setdefault(shape, describe(j))
            c = cells.setdefault(shape, {})
            c.setdefault("jax", []).append(j["tasks_per_s"])
            c.setdefault("temporaries", []).append(field(j, "xla_memory_mb.temporaries"))
            c.setdefault("jax_rss", []).append(j.get("peak_rss_delta_mb"))
            for impl, r in pair.items():
                c.setdefault(impl, []).append(r and r["tasks_per_s"])
                c.setdefault(f"{impl} ratio", []).append(r and j["tasks_per_s"] / r["tasks_per_s"])
            loop = pair["torch-loop"]
            c.setdefault("loop_rss", []).append(loop and loop.get("peak_rss_delta_mb"))
    if not cells:
        raise TableError("no shape was measured by both JAX and a PyTorch reference")
    header = [
        "workload",
        "metajax (tasks/s)",
        "PyTorch task loop",
        "torch.func vmap",
        "vs loop",
        "vs torch.func",
        "XLA temporaries (MB)",
        "peak RSS over baseline, metajax / loop (MB)",
    ]
    rows = []
    for shape, c in cells.items():
        rss = f"{fmt_range('peak_rss_delta_mb', c['jax_rss'])} / {fmt_range('peak_rss_delta_mb', c['loop_rss'])}"
        rows.append(
            [
                labels[shape],
                fmt_range("tasks_per_s", c["jax"]),
                fmt_range("tasks_per_s", c["torch-loop"]),
                fmt_range("tasks_per_s", c["torch-func"]),
                fmt_range("speedup", c["torch-loop ratio"]),
                fmt_range("speedup", c["torch-func ratio"]),
                fmt_range("xla_memory_mb.temporaries", c["temporaries"]),
                rss,
            ]
        )
    return markdown(header, rows)


def _is_measure(name: str) -> bool:
    return name not in SHAPE_KEYS and name not in (
        "task_batching",
        "conv_impl",
        "remat",
        "dtype",
        "impl",
        "filters",
        "queries",
        "threads",
        "task_batching_requested",
        "conv_impl_requested",
    )


def results_table(runs: list[list[dict]], cols: list[str]) -> str:
    keys = [c for c in cols if not _is_measure(c)]
    if "workload" in cols:  # its label names the whole shape, so rows are told apart by all of it
        keys += [k for k in (*SHAPE_KEYS, "filters") if k not in keys]
    rows: dict[tuple, dict[str, list]] = {}
    for run in runs:
        for r in run:
            row = rows.setdefault(tuple(str(field(r, k)) for k in keys), {"_first": [r]})
            for c in cols:
                row.setdefault(c, []).append(field(r, c))
    if not rows:
        raise TableError("no result line matches")
    body = []
    for row in rows.values():
        first = row["_first"][0]
        body.append([describe(first) if c == "workload" else fmt_range(c, row[c]) for c in cols])
    return markdown([LABELS.get(c, c) for c in cols], body)


def pivot_table(runs: list[list[dict]], row_keys: list[str], col_key: str, value: str) -> str:
    cells: dict[tuple, dict[str, list]] = {}
    columns: dict[str, None] = {}
    for run in runs:
        for r in run:
            column = str(field(r, col_key))
            columns[column] = None
            cells.setdefault(tuple(str(field(r, k)) for k in row_keys), {}).setdefault(column, []).append(
                field(r, value)
            )
    if not cells:
        raise TableError("no result line matches")
    header = [LABELS.get(k, k) for k in row_keys] + [f"{c} ({LABELS.get(value, value)})" for c in columns]
    body = [list(key) + [fmt_range(value, row.get(c, [])) for c in columns] for key, row in cells.items()]
    return markdown(header, body)


def eval_table(records: list[dict], cols: list[str], metric: str, steps: list[int]) -> str:
    """The rows of :func:`render`'s ``kind=eval`` (see the module docstring)."""
    body = []
    for r in records:
        if metric not in r["eval"]:
            raise TableError(f"metric {metric!r} is not in an eval of {sorted(r['eval'])}")
        m, num_tasks = r["eval"][metric], r["eval"].get("num_tasks")
        cells = []
        for step in steps:
            if step >= len(m["mean"]):
                cells.append("-")
                continue
            # A non-finite mean is written as null: a task's (one run) or a seed's (--seeds) diverged.
            cell = "non-finite" if m["mean"][step] is None else f"{m['mean'][step]:.3f} +- {m['ci95'][step]:.3f}"
            nonfinite = (m.get("nonfinite") or [0] * len(m["mean"]))[step]
            seeds = m.get("per_seed") or {}
            bad_seeds = sum(v[step] is None for v in seeds.values() if step < len(v))
            if nonfinite:
                cell += f" ({nonfinite} of {num_tasks} tasks non-finite)"
            elif bad_seeds:
                cell += f" ({bad_seeds} of {len(seeds)} seeds non-finite)"
            cells.append(cell)
        body.append([fmt_number(c, field(r, c)) for c in cols] + cells)
    header = [LABELS.get(c, c) for c in cols] + [f"{metric} after {s} step{'' if s == 1 else 's'}" for s in steps]
    return markdown(header, body)


# ----------------------------------------------------------------------------- markers


def parse_attrs(text: str) -> dict[str, str]:
    attrs = {}
    for item in text.split():
        if "=" not in item:
            raise TableError(f"marker option {item!r} is not name=value")
        k, v = item.split("=", 1)
        attrs[k] = v
    return attrs


def _where(text: str) -> dict[str, list[str]]:
    where = {}
    for item in filter(None, text.split(",")):
        if ":" not in item:
            raise TableError(f"where= takes field:value pairs, got {item!r}")
        k, v = item.split(":", 1)
        where[k] = v.split("|")
    return where


def render(attrs: dict[str, str], root: Path = ROOT) -> str:
    """The markdown table a marker's options ask for."""
    if "source" not in attrs:
        raise TableError("the marker names no source=FILE.jsonl")
    sources = attrs["source"].split(",")
    for source in sources:
        if not (root / source).is_file():
            raise TableError(f"source {source} does not exist under {root}")
    paths = [root / source for source in sources]
    kind = attrs.get("kind", "results")
    if kind == "eval":
        missing = [k for k in ("cols", "metric", "steps") if k not in attrs]
        if missing:
            raise TableError(f"kind=eval needs {', '.join(missing)}")
        try:
            steps = [int(s) for s in attrs["steps"].split(",")]
        except ValueError:
            raise TableError(f"steps= takes adaptation steps as integers, got {attrs['steps']!r}") from None
        return eval_table([read_metrics(path) for path in paths], attrs["cols"].split(","), attrs["metric"], steps)
    if len(paths) != 1:
        raise TableError(f"kind={kind} reads one source file, got {attrs['source']!r}")
    where = _where(attrs.get("where", ""))
    runs = read_runs(paths[0])
    if kind == "torch":
        return torch_table([[r for r in run if r.get("kind") == "result" and _matches(r, where)] for run in runs])
    if kind == "reproduce":
        return reproduce_table([r for run in runs for r in run if "protocol" in r and _matches(r, where)])
    runs = _results(runs, where)
    if kind == "results":
        if "cols" not in attrs:
            raise TableError("kind=results needs cols=field,...")
        return results_table(runs, attrs["cols"].split(","))
    if kind == "pivot":
        missing = [k for k in ("rows", "cols", "value") if k not in attrs]
        if missing:
            raise TableError(f"kind=pivot needs {', '.join(missing)}")
        return pivot_table(runs, attrs["rows"].split(","), attrs["cols"], attrs["value"])
    raise TableError(f"unknown kind={kind!r} (torch, results, pivot, reproduce, eval)")


def reproduce_table(lines: list[dict]) -> str:
    """The rows of :func:`render`'s ``kind=reproduce`` (see the module docstring)."""
    if not lines:
        raise TableError("no reproduce_fewshot line matches")
    body = []
    for r in lines:
        acc, ci = r["accuracy_percent"], r["ci95_percent"]
        ours = f"{acc[-1]:.2f} +- {ci[-1]:.2f}"
        if len(acc) > 1:
            ours += f" ({len(acc) - 1} steps; {acc[0]:.2f} before)"
        argv = r["argv"].split()
        command = f"python scripts/reproduce_fewshot.py --protocol {r['protocol']}"
        if "--time-limit" in argv:
            command += f" --time-limit {argv[argv.index('--time-limit') + 1]}"
        if r["budget"].endswith(" steps"):
            command += f" --steps {r['budget'].split()[0]}"
        trained = f"{r['steps_trained']:,} meta-steps, {r['train_minutes']:.0f} min"
        commit = r.get("commit") or "-"
        commit = commit[:7] + ("+" if commit.endswith("+") else "")  # +: the tree had uncommitted changes
        body.append([r["protocol"], r["paper"], ours, trained, commit, f"`{command}`"])
    header = ["protocol", "paper (%)", "ours, test accuracy (%)", "trained", "commit", "command"]
    return markdown(header, body)


def regenerate(text: str, root: Path = ROOT) -> tuple[str, list[tuple[str, str]]]:
    """``text`` with every marked region regenerated, and ``(name, table)`` of each."""
    tables = []

    def replace(m: re.Match) -> str:
        try:
            table = render(parse_attrs(m["attrs"]), root)
        except TableError as e:
            raise TableError(f"table {m['name']}: {e}") from None
        tables.append((m["name"], table))
        return f"<!-- table:{m['name']}{m['attrs']}-->\n{table}<!-- /table:{m['name']} -->"

    return MARKER.sub(replace, text), tables


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="perf_tables.py", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help=f"markdown files (default: {' '.join(DEFAULT_FILES)})")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the marked regions in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when a marked region is stale")
    p.add_argument("--root", type=Path, default=ROOT, help="folder the sources are relative to (default: the repo)")
    args = p.parse_args(argv)
    files = [Path(f) for f in args.files] or [args.root / f for f in DEFAULT_FILES]
    stale = []
    for path in files:
        text = path.read_text()
        try:
            new, tables = regenerate(text, args.root)
        except TableError as e:
            print(f"{path}: {e}", file=sys.stderr)
            return 1
        if args.check:
            if new != text:
                stale.append(path)
        elif args.write:
            if new != text:
                path.write_text(new)
                print(f"{path}: rewrote {len(tables)} table(s)")
        else:
            for name, table in tables:
                print(f"{path} table:{name}\n{table}")
    if stale:
        print(
            "stale tables in " + ", ".join(map(str, stale)) + ": run python scripts/perf_tables.py --write",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
