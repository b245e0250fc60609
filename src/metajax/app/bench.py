"""Throughput benchmarks: ``metajax bench`` and ``scripts/benchmark.py``.

The workloads, each meta-trained with Adam exactly as :func:`metajax.train` runs it
(episodes drawn on the device inside the jitted step, donated state):

* ``maml-sinusoid``: MLP 1-40-40-1, K=10 support and 10 query points, meta-batch 25,
  1 inner SGD step (lr 0.01), second order, 100 meta-steps per dispatch.
* ``maml-omniglot``: Conv4-64, 5-way 1-shot, 5 queries per class, meta-batch 32, 1 inner
  step (lr 0.4), first and second order, with both Conv4 variants (``--pool``): stride-2
  convolutions (the MAML paper's Omniglot network) and 2x2 max-pooling (MAML's
  miniImageNet network, learn2learn's CNN4).
* ``protonet-omniglot``: Conv4 with 64 max-pooled filters, 5-way and 20-way 1-shot,
  15 queries per class, meta-batch 1 (one episode per update, as in the paper).
* ``matchingnet-omniglot``, ``transformer-omniglot``, ``snail-omniglot``,
  ``feat-omniglot``: the other embedding learners (metric and attention) on the same
  episodes and embedding, with their registry defaults (Matching Networks: cosine
  attention without full-context embeddings); episodes/s. PyTorch references exist for
  ProtoNets and Matching Networks.

Images are random uint8 arrays, so the benchmark needs no download; the cost of a step
does not depend on pixel values. ``--image`` chooses their shape for the Conv4 workloads
(the ``-omniglot`` names say which learner runs; every record names its ``image``):

* ``omniglot`` (default): 28x28x1, 100 classes of 20, Conv4-64, 1 shot.
* ``miniimagenet``: 84x84x3, 25 classes of 30, Conv4-32 with max-pooling, 15 queries per
  class, 1 and 5 shots (``--shots``); MAML there takes 5 inner steps of lr 0.01 at
  meta-batch 4 (the MAML paper's miniImageNet settings).

Every measurement prints one JSON line: tasks/s (from the median step time over the timed
steps after warm-up), ms per step, compile time, FLOPs per step (XLA's cost analysis of
one task's loss-and-gradient, times the tasks in the step), GFLOP/s and its share of an
f32 matmul peak measured in the same process, XLA's planned memory of the step
(arguments, outputs, temporaries) and the process's peak resident memory. By default each
configuration runs in a fresh subprocess, so peak memory belongs to it alone. The first
line describes the machine; with PyTorch installed (``pip install metajax[bench]``) and
``--torch``, PyTorch references of the same workloads run too (a learn2learn-style loop
over tasks, and ``torch.func.vmap``), followed by one ``ratio`` line per reference.

Peak resident memory is per configuration: in a fresh subprocess (the default) or, with
``--in-process``, after resetting the kernel's peak counter (``/proc/self/clear_refs``) at
the start of each configuration (``peak_rss_scope`` says which held). Each ``ratio`` line
puts the JAX step's planned temporaries and peak memory next to the reference's peak.

Example:
    $ python scripts/benchmark.py --workload maml-omniglot --order second --torch
    $ metajax bench --workload maml-omniglot --pool max --meta-batch 8,16,32,64,128,256
    $ metajax bench --workload maml-omniglot --inner-steps 1,5,20 --remat both --meta-batch 8
    $ metajax bench --workload maml-omniglot,protonet-omniglot --image miniimagenet --torch
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metajax._io import append_json_line, dumps
from metajax.app import process
from metajax.app.errors import CommandError, output_file_folder, run_command

# Embedding learners on Omniglot episodes: one workload each, built by registry name.
EPISODIC = tuple(f"{name}-omniglot" for name in ("protonet", "matchingnet", "transformer", "snail", "feat"))
WORKLOADS = ("maml-sinusoid", "maml-omniglot", *EPISODIC)
TORCH_WORKLOADS = ("maml-sinusoid", "maml-omniglot", "protonet-omniglot", "matchingnet-omniglot")
IMAGES = ("omniglot", "miniimagenet")
POOLS = ("stride", "max")
# The random arrays standing in for each dataset, and the Conv4 and episode sizes used on them.
_IMAGE_SPECS: dict[str, dict[str, Any]] = {
    "omniglot": dict(size=28, channels=1, classes=100, examples=20, filters=64, shots=[1], episodic_ways=[5, 20]),
    "miniimagenet": dict(
        size=84, channels=3, classes=25, examples=30, filters=32, shots=[1, 5], episodic_ways=[5], queries=15
    ),
}
# MAML's settings per image: (meta-batch, inner steps, inner lr, queries per class, default pools).
_MAML_SPECS: dict[str, dict[str, Any]] = {
    "omniglot": dict(meta_batch=32, inner_steps=1, inner_lr=0.4, queries=5, pools=["stride", "max"]),
    "miniimagenet": dict(meta_batch=4, inner_steps=5, inner_lr=0.01, queries=15, pools=["max"]),
}
# The shape of a measurement: what a JAX run and a PyTorch reference must share to be compared.
SHAPE_KEYS = ("workload", "image", "pool", "shots", "meta_batch", "inner_steps", "ways", "order")
JAX_IMPLS = ("jax",)
TORCH_IMPLS = ("torch-loop", "torch-func")
_DEFAULTS: dict[str, dict[str, Any]] = {
    "maml-sinusoid": {"meta_batch": 25, "inner_steps": 1, "steps_per_call": 100, "ways": 1},
    "maml-omniglot": {"meta_batch": 32, "inner_steps": 1, "steps_per_call": 1, "ways": 5},
    **{w: {"meta_batch": 1, "inner_steps": 0, "steps_per_call": 1, "ways": 5} for w in EPISODIC},
}


# ----------------------------------------------------------------------------- arguments


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _choices(allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        values = [v for v in text.split(",") if v]
        bad = [v for v in values if v not in allowed]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(allowed)}; got {text!r}")
        return values

    return parse


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workload",
        type=_choices(WORKLOADS + ("all",)),
        default=["all"],
        help="comma-separated workloads, or all (default)",
    )
    p.add_argument(
        "--meta-batch", type=_ints, default=None, help="tasks per step, comma-separated sweep (default per workload)"
    )
    p.add_argument(
        "--inner-steps", type=_ints, default=None, help="MAML inner steps, comma-separated sweep (default 1)"
    )
    p.add_argument(
        "--ways",
        type=_ints,
        default=None,
        help="embedding learners' ways (default 5,20; miniimagenet 5); MAML Omniglot ways (default 5)",
    )
    p.add_argument("--shots", type=_ints, default=None, help="support examples per class (default 1; miniimagenet 1,5)")
    p.add_argument(
        "--image",
        type=_choices(IMAGES),
        default=["omniglot"],
        help="input shape of the Conv4 workloads: omniglot (28x28x1, default), miniimagenet (84x84x3, Conv4-32)",
    )
    p.add_argument(
        "--pool",
        type=_choices(POOLS),
        default=None,
        help="MAML Conv4 variant: stride (MAML's Omniglot net), max (its miniImageNet net, learn2learn's CNN4); "
        "comma-separated (default stride,max on omniglot, max on miniimagenet)",
    )
    p.add_argument(
        "--order",
        type=_choices(("first", "second")),
        default=["first", "second"],
        help="MAML Omniglot meta-gradient: first, second or both (default)",
    )
    p.add_argument(
        "--task-batching",
        type=_choices(("auto", "vmap", "map")),
        default=["auto"],
        help="how tasks are batched: auto (per backend, the library default), vmap, map; comma-separated sweep",
    )
    p.add_argument(
        "--conv-impl",
        type=_choices(("auto", "xla", "patches", "mixed")),
        default=["auto"],
        help="Conv4 convolutions: auto (per backend), xla, patches, mixed; comma-separated sweep",
    )
    p.add_argument("--remat", choices=("off", "on", "both"), default="off", help="jax.checkpoint on the inner loop")
    p.add_argument("--dtype", type=_choices(("float32", "bfloat16")), default=["float32"], help="compute dtype")
    p.add_argument("--steps", type=int, default=5, help="timed dispatches (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed dispatches after compilation (default 2)")
    p.add_argument(
        "--steps-per-call", type=int, default=None, help="meta-steps per dispatch (default: 100 sinusoid, else 1)"
    )
    p.add_argument("--torch", action="store_true", help="also run the PyTorch references (needs the bench extra)")
    p.add_argument("--torch-only", action="store_true", help="run only the PyTorch references")
    p.add_argument(
        "--in-process", action="store_true", help="run every configuration in this process (memory figures mix)"
    )
    p.add_argument(
        "--matmul-size", type=int, default=2048, help="side of the f32 matmul that measures the peak (default 2048)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="pin each measurement to this many cores (sched_setaffinity; torch.set_num_threads); default: all",
    )
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to a ``metajax`` argument parser's subparsers."""
    p = subparsers.add_parser(
        "bench", help="throughput benchmarks; prints JSON lines", description=__doc__.split("\n\n")[0]
    )
    _add_arguments(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``scripts/benchmark.py`` (the ``bench`` subcommand's arguments)."""
    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    return p


# ----------------------------------------------------------------------------- driver


def configs(args: argparse.Namespace) -> list[dict]:
    """Every configuration the arguments ask for, JAX first, then the PyTorch references."""
    workloads = WORKLOADS if "all" in args.workload else tuple(args.workload)
    remats = {"off": [False], "on": [True], "both": [False, True]}[args.remat]
    out = []
    for w in workloads:
        d = _DEFAULTS[w]
        # The sinusoid has no images; every other workload is swept over --image.
        for image in ["none"] if w == "maml-sinusoid" else args.image:
            spec = _IMAGE_SPECS.get(image, {})
            shots_list = [10] if w == "maml-sinusoid" else (args.shots or spec["shots"])
            if w in EPISODIC:
                ways, inner, orders, remat_list = args.ways or spec["episodic_ways"], [0], ["none"], [False]
                meta_batches, pools, queries, filters = args.meta_batch or [1], ["max"], 15, spec["filters"]
            elif w == "maml-omniglot":
                maml = _MAML_SPECS[image]
                ways, inner, orders = args.ways or [5], args.inner_steps or [maml["inner_steps"]], args.order
                meta_batches, pools = args.meta_batch or [maml["meta_batch"]], args.pool or maml["pools"]
                queries, filters, remat_list = maml["queries"], spec["filters"], remats
            else:
                ways, inner, orders, remat_list = [1], args.inner_steps or [d["inner_steps"]], ["second"], remats
                meta_batches, pools, queries, filters = args.meta_batch or [d["meta_batch"]], ["none"], 10, 0
            conv_impls = ["none"] if w == "maml-sinusoid" else args.conv_impl
            spc = args.steps_per_call or d["steps_per_call"]
            for pool, shots, mb, k, n_ways, order in itertools.product(
                pools, shots_list, meta_batches, inner, ways, orders
            ):
                base = dict(
                    workload=w,
                    image=image,
                    pool=pool,
                    filters=filters,
                    shots=shots,
                    queries=queries,
                    meta_batch=mb,
                    inner_steps=k,
                    ways=n_ways,
                    order=order,
                    steps=args.steps,
                    warmup=args.warmup,
                    matmul_size=args.matmul_size,
                    threads=args.threads,
                )
                if not args.torch_only:
                    for tb, ci, rm, dt in itertools.product(args.task_batching, conv_impls, remat_list, args.dtype):
                        out.append(
                            dict(
                                base, impl="jax", task_batching=tb, conv_impl=ci, remat=rm, dtype=dt, steps_per_call=spc
                            )
                        )
                if (args.torch or args.torch_only) and w in TORCH_WORKLOADS:
                    for impl in TORCH_IMPLS:
                        out.append(dict(base, impl=impl, steps_per_call=1))
    return out


def run(args: argparse.Namespace) -> list[dict]:
    """Run ``metajax bench``: print (and return) one JSON line per measurement."""
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be positive, got {args.threads}.")
    if args.in_process:
        _pin_threads(args.threads)
    for name in ("steps", "warmup"):
        if getattr(args, name) < (1 if name == "steps" else 0):
            raise CommandError(
                f"--{name} must be {'positive' if name == 'steps' else 'non-negative'}, got {getattr(args, name)}."
            )
    if (args.torch or args.torch_only) and not _have_torch():
        raise CommandError("--torch needs PyTorch; install the bench extra: pip install 'metajax[bench]'.")
    if args.out:
        output_file_folder(Path(args.out))
    results: list[dict] = []

    def emit(record: dict) -> None:
        print(dumps(record), flush=True)
        if args.out:
            append_json_line(args.out, record)
        results.append(record)

    emit({"kind": "machine", **machine_info(torch=args.torch or args.torch_only)})
    for config in configs(args):
        emit(_run_one(config, in_process=True) if args.in_process else _run_isolated(config))
    for record in ratios(results):
        emit(record)
    return results


def command(args: argparse.Namespace) -> int:
    """``metajax bench``: :func:`run`, exit status 0."""
    run(args)
    return 0


def _run_isolated(config: dict) -> dict:
    cmd = [sys.executable, "-m", "metajax.app.bench", "--worker", json.dumps(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"kind": "error", **config, "returncode": proc.returncode, "stderr_tail": tail}
    return json.loads(lines[-1])


def ratios(results: list[dict]) -> list[dict]:
    """For each PyTorch result, the JAX default configuration's speed and memory against it (same shape).

    Each line holds the speed-up, the JAX step's planned temporaries (XLA's memory analysis)
    and both sides' peak resident memory, absolute and over the post-set-up baseline.
    Records written before a shape key existed (``image``, ``pool``, ``shots``) match on
    the keys they have.
    """
    key = lambda r: tuple(r.get(k) for k in SHAPE_KEYS)
    jax_default: dict[tuple, tuple[bool, dict]] = {}
    for r in results:
        if r.get("kind") == "result" and r["impl"] == "jax" and r["dtype"] == "float32" and not r["remat"]:
            # Prefer the library default (auto/auto); else the fastest JAX variant measured.
            best = jax_default.get(key(r))
            is_auto = r["task_batching_requested"] == "auto" and r["conv_impl_requested"] in ("auto", "none")
            if (
                best is None
                or (is_auto and not best[0])
                or (is_auto == best[0] and r["tasks_per_s"] > best[1]["tasks_per_s"])
            ):
                jax_default[key(r)] = (is_auto, r)
    out = []
    for r in results:
        if r.get("kind") == "result" and r["impl"] in TORCH_IMPLS and key(r) in jax_default:
            j = jax_default[key(r)][1]
            shape = {k: r[k] for k in SHAPE_KEYS if k in r}
            out.append(
                {
                    "kind": "ratio",
                    **shape,
                    "jax": f"{j['task_batching']}/{j['conv_impl']}",
                    "reference": r["impl"],
                    "speedup": j["tasks_per_s"] / r["tasks_per_s"],
                    "peak_rss_delta_ratio": j["peak_rss_delta_mb"] / max(r["peak_rss_delta_mb"], 1e-9),
                    "jax_xla_temporaries_mb": (j.get("xla_memory_mb") or {}).get("temporaries"),
                    "jax_peak_rss_mb": j.get("peak_rss_mb"),
                    "jax_peak_rss_delta_mb": j["peak_rss_delta_mb"],
                    "reference_peak_rss_mb": r.get("peak_rss_mb"),
                    "reference_peak_rss_delta_mb": r["peak_rss_delta_mb"],
                }
            )
    return out


# ----------------------------------------------------------------------------- measurement helpers


def machine_info(torch: bool = False) -> dict:
    """Machine, software and load, for the first JSON line."""
    from metajax.app.runs import machine

    info = machine()
    info["load_avg"] = list(os.getloadavg())
    info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    if torch and _have_torch():
        import torch as th

        info["torch"] = th.__version__
        info["torch_threads"] = th.get_num_threads()
    return info


def _pin_threads(threads: int | None) -> None:
    """Restrict this process to its first ``threads`` allowed cores (Linux), for JAX and PyTorch alike.

    On a shared machine, PyTorch's OpenMP threads spin at barriers and slow down many-fold
    when another process takes one of their cores; one pinned thread per framework degrades
    in proportion to the load instead, so ``--threads 1`` compares like with like there.
    """
    if not threads:
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _have_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident memory to its current one (Linux ``clear_refs``); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_mb() -> tuple[float, float]:
    """``(current, peak)`` resident memory of this process in MiB (Linux), else ``(nan, nan)``."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return float("nan"), float("nan")


def _time_calls(fn, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """f32 ``[n, n] @ [n, n]`` GFLOP/s with XLA on the default device (median of ``repeats``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = _time_calls(lambda: f(a).block_until_ready(), 1, repeats)
    return 2 * n**3 / float(np.median(times)) / 1e9


def _images(image: str = "omniglot"):
    """Random uint8 images ``[classes, examples, H, W, C]`` of ``image``'s shape (see ``--image``)."""
    import numpy as np

    spec = _IMAGE_SPECS[image]
    shape = (spec["classes"], spec["examples"], spec["size"], spec["size"], spec["channels"])
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def shape_of(config: dict) -> dict:
    """The Conv4 and episode sizes of a configuration, with the defaults of records that predate them.

    ``{"image", "pool", "filters", "shots", "queries", "size", "channels", "features", "inner_lr"}``;
    ``features`` is the flattened Conv4 output (SAME padding halves each side, rounding up, four times).
    """
    w = config["workload"]
    image = config.get("image") or "omniglot"
    spec = _IMAGE_SPECS[image if image != "none" else "omniglot"]
    maml = _MAML_SPECS[image if image != "none" else "omniglot"]
    pool = config.get("pool") or ("stride" if w == "maml-omniglot" else "max")
    filters = config.get("filters") or spec["filters"]
    queries = config.get("queries") or (maml["queries"] if w == "maml-omniglot" else 15)
    side = spec["size"]
    for _ in range(4):
        side = -(-side // 2)
    return dict(
        image=image,
        pool=pool,
        filters=filters,
        shots=config.get("shots") or 1,
        queries=queries,
        size=spec["size"],
        channels=spec["channels"],
        features=filters * side * side,
        inner_lr=maml["inner_lr"],
    )


# ----------------------------------------------------------------------------- JAX


def jax_setup(config: dict):
    """``(learner, task)`` of a JAX configuration, built through the learner registry."""
    import dataclasses

    import jax.numpy as jnp

    from metajax import learner as registry
    from metajax import models, tasks

    dtype = jnp.bfloat16 if config["dtype"] == "bfloat16" else None
    impl = conv_impl_of(config)
    w = config["workload"]
    if w == "maml-sinusoid":
        spec = registry.Spec(
            "regression",
            1,
            lambda out: models.MLP(hidden=(40, 40), out=out, dtype=dtype),
            inner_lr=0.01,
            inner_steps=config["inner_steps"],
        )
        learner = dataclasses.replace(registry.build("maml", spec), remat=config["remat"])
        return learner, tasks.Sinusoid(shots=10)
    shape = shape_of(config)
    task = tasks.FewShot(_images(shape["image"]), ways=config["ways"], shots=shape["shots"], queries=shape["queries"])
    conv4 = lambda out: models.Conv4(filters=shape["filters"], out=out, pool=shape["pool"], impl=impl, dtype=dtype)
    if w == "maml-omniglot":
        spec = registry.Spec(
            "classification", config["ways"], conv4, inner_lr=shape["inner_lr"], inner_steps=config["inner_steps"]
        )
        name = "maml" if config["order"] == "second" else "fomaml"
        learner = dataclasses.replace(registry.build(name, spec), remat=config["remat"])
        return learner, task
    return registry.build(w.removesuffix("-omniglot"), registry.Spec("classification", config["ways"], conv4)), task


def conv_impl_of(config: dict) -> str:
    """The Conv4 formulation a configuration runs: its ``conv_impl``, or for ``"auto"`` the backend's default.

    The default for weights shared by every task (the embedding learners) or adapted per
    task (MAML), as ``metajax train`` chooses it; ``"none"`` for the sinusoid MLP.
    """
    from metajax.models.conv import default_conv_impl

    if config["workload"] == "maml-sinusoid":
        return "none"
    if config["conv_impl"] == "auto":
        return default_conv_impl(shared_weights=config["workload"] in EPISODIC)
    return config["conv_impl"]


def _run_one(config: dict, in_process: bool = False) -> dict:
    record = run_jax(config, in_process) if config["impl"] == "jax" else run_torch(config, in_process)
    return {**record, **process.settings()}


def run_jax(config: dict, in_process: bool = False) -> dict:
    """Measure one JAX configuration; returns its JSON record (``in_process``: other configurations ran before)."""
    import jax
    import numpy as np
    import optax

    from metajax.training import first_episode, init_state, make_train_step

    peak = matmul_peak_gflops(config.get("matmul_size", 2048))
    peak_scope = _peak_rss_scope(in_process)
    learner, task = jax_setup(config)
    mb, spc = config["meta_batch"], config["steps_per_call"]
    optimizer = optax.adam(1e-3)
    state = init_state(learner, task, optimizer, jax.random.key(0))
    requested = None if config["task_batching"] == "auto" else config["task_batching"]
    # The very program metajax.train runs, lowered here to read its cost and memory.
    step = make_train_step(learner, task, optimizer, mb, spc, requested)
    batching, task_arrays = step.task_batching, step.task_arrays
    rss_setup, _ = _rss_mb()

    t0 = time.perf_counter()
    compiled = step.jitted.lower(state, task_arrays).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()

    # FLOPs of one task's loss and gradient (a lax.map body would be counted once, so count one task).
    episode = first_episode(task, jax.random.key(1))
    grad_one = jax.jit(jax.value_and_grad(lambda p, e, k: learner.loss(p, e, k)[0]))
    flops_task = _flops(grad_one.lower(state.params, episode, jax.random.key(2)).compile())

    holder = [state]

    def call():
        holder[0], metrics = compiled(holder[0], task_arrays)
        jax.block_until_ready((holder[0], metrics))

    times = _time_calls(call, config["warmup"], config["steps"])
    rss_now, rss_peak = _rss_mb()
    median = float(np.median(times))
    flops_step = flops_task * mb * spc
    record = dict(
        config,
        kind="result",
        task_batching_requested=config["task_batching"],
        conv_impl_requested=config["conv_impl"],
        task_batching=batching,
        conv_impl=conv_impl_of(config),
    )
    record.update(_speed(times, median, mb * spc, spc, flops_step, peak))
    if config["inner_steps"] > 1:
        # XLA's cost analysis counts a loop body once, and the inner loop is a lax.scan.
        record["flops_note"] = "lower bound: the inner-loop scan body is counted once"
    record.update(
        compile_s=compile_s,
        xla_memory_mb={
            "arguments": mem.argument_size_in_bytes / 2**20,
            "outputs": mem.output_size_in_bytes / 2**20,
            "temporaries": mem.temp_size_in_bytes / 2**20,
            "aliased": mem.alias_size_in_bytes / 2**20,
        }
        if mem is not None
        else None,
        rss_setup_mb=rss_setup,
        peak_rss_mb=rss_peak,
        peak_rss_delta_mb=rss_peak - rss_setup,
        peak_rss_scope=peak_scope,
        device_memory_mb=_device_peak_mb(),
        load_avg_1min=os.getloadavg()[0],
    )
    return record


def _peak_rss_scope(in_process: bool) -> str:
    """``"process"`` in a fresh worker; in-process, ``"config"`` when the peak counter could be reset."""
    if not in_process:
        return "process"
    return "config" if _reset_peak_rss() else "process (not reset: several configurations mix)"


def _device_peak_mb() -> float | None:
    """Peak memory in use on JAX's first device (MiB) where the backend reports it (GPU, TPU); else None."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _speed(times: list[float], median: float, tasks: int, steps: int, flops: float, peak: float) -> dict:
    """Speed figures of a dispatch running ``steps`` meta-steps over ``tasks`` tasks in all."""
    gflops = flops / median / 1e9
    return {
        "tasks_per_s": tasks / median,
        "ms_per_step": median * 1e3 / steps,
        "ms_per_dispatch": median * 1e3,
        "step_times_ms": [t * 1e3 for t in times],
        "gflop_per_step": flops / steps / 1e9,
        "gflop_per_s": gflops,
        "matmul_peak_gflop_per_s": peak,
        "share_of_matmul_peak": gflops / peak,
    }


# ----------------------------------------------------------------------------- PyTorch references


def run_torch(config: dict, in_process: bool = False) -> dict:
    """Measure one PyTorch reference (``torch-loop`` or ``torch-func``); returns its JSON record.

    FLOPs per step are XLA's count for the same workload (the same arithmetic), so that
    GFLOP/s compare like with like.
    """
    import jax
    import numpy as np
    import torch

    from metajax.app import bench_torch
    from metajax.training import first_episode

    peak = matmul_peak_gflops(config.get("matmul_size", 2048))
    peak_scope = _peak_rss_scope(in_process)
    jax_cfg = dict(config, task_batching="vmap", conv_impl="xla", remat=False, dtype="float32")
    learner, task = jax_setup(jax_cfg)
    episode = first_episode(task, jax.random.key(1))
    params = learner.init(jax.random.key(0), episode)
    grad_one = jax.jit(jax.value_and_grad(lambda p, e, k: learner.loss(p, e, k)[0]))
    flops_task = _flops(grad_one.lower(params, episode, jax.random.key(2)).compile())
    # A fixed batch of episodes, drawn once (the JAX step draws new ones inside the step).
    batch = jax.device_get(task.sample(jax.random.key(3), config["meta_batch"]))
    torch.manual_seed(0)
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    rss_setup, _ = _rss_mb()
    step = bench_torch.make_step(config, batch, shape_of(config))
    times = _time_calls(step, config["warmup"] + 1, config["steps"])
    _, rss_peak = _rss_mb()
    median = float(np.median(times))
    record = dict(config, kind="result", torch_threads=torch.get_num_threads(), torch_device=str(bench_torch.DEVICE))
    record.update(_speed(times, median, config["meta_batch"], 1, flops_task * config["meta_batch"], peak))
    record.update(
        rss_setup_mb=rss_setup,
        peak_rss_mb=rss_peak,
        peak_rss_delta_mb=rss_peak - rss_setup,
        peak_rss_scope=peak_scope,
        device_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if bench_torch.DEVICE.type == "cuda" else None,
        load_avg_1min=os.getloadavg()[0],
    )
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m metajax.app.bench`` / ``scripts/benchmark.py``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        process.configure()  # the parent's settings: it passed its environment on
        config = json.loads(argv[1])
        _pin_threads(config.get("threads"))  # before JAX or PyTorch size their thread pools
        print(json.dumps(_run_one(config)), flush=True)
        return 0
    args = build_parser().parse_args(argv)

    def body() -> int:
        process.configure()
        return command(args)

    return run_command("bench", body)


if __name__ == "__main__":
    sys.exit(main())
