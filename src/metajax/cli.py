"""Command line: ``metajax train ...``.

``metajax train`` meta-trains a learner, evaluates it on new tasks and writes
``OUT/metrics.json`` (config, training-curve summary, and per adaptation step the mean
and 95% interval of the metric). The defaults are the MAML paper's sinusoid protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ALGORITHMS = ("maml", "fomaml", "imaml", "reptile", "anil", "metasgd")
TASKS = ("sinusoid",)


def build_parser() -> argparse.ArgumentParser:
    """The ``metajax`` argument parser."""
    parser = argparse.ArgumentParser(prog="metajax", description="Meta-learning in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="meta-train, evaluate on new tasks, write OUT/metrics.json")
    t.add_argument("--algo", choices=ALGORITHMS, default="maml", help="learner (default: maml)")
    t.add_argument("--task", choices=TASKS, default="sinusoid", help="task distribution (default: sinusoid)")
    t.add_argument("--shots", type=int, default=10, help="support examples per task (sinusoid: K points; default 10)")
    t.add_argument("--query", type=int, default=None, help="query examples per task (default: equal to --shots)")
    t.add_argument("--meta-batch", type=int, default=25, help="tasks per meta-step (default 25)")
    t.add_argument("--inner-steps", type=int, default=1, help="inner steps during meta-training (default 1)")
    t.add_argument("--inner-lr", type=float, default=0.01, help="inner SGD step size (default 0.01)")
    t.add_argument("--meta-lr", type=float, default=1e-3, help="Adam step size of the outer loop (default 1e-3)")
    t.add_argument("--steps", type=int, default=70000, help="meta-steps (default 70000)")
    t.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    t.add_argument("--out", type=Path, required=True, help="output directory")
    t.add_argument("--eval-tasks", type=int, default=600, help="new tasks at meta-test (default 600)")
    t.add_argument("--eval-steps", type=int, default=10, help="inner steps at meta-test (default 10)")
    t.add_argument("--imaml-prox", type=float, default=1.0, help="iMAML proximal strength lambda (default 1.0)")
    t.add_argument("--imaml-cg-steps", type=int, default=5, help="iMAML conjugate-gradient steps (default 5)")
    t.add_argument("--steps-per-call", type=int, default=None, help="meta-steps per dispatch (default: 100 for sinusoid)")
    t.add_argument("--log-every", type=int, default=1000, help="meta-steps per logged training entry (default 1000)")
    t.add_argument("--task-batching", choices=("vmap", "map"), default="vmap", help="how tasks are batched")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def build_learner(args: argparse.Namespace):
    """The learner named by ``--algo``, with the task's model and objective."""
    import flax.linen as nn

    from metajax import algorithms, losses, models

    objective = losses.mse
    common = dict(inner_lr=args.inner_lr, inner_steps=args.inner_steps, objective=objective)
    mlp = models.MLP(hidden=(40, 40), out=1)
    if args.algo == "maml":
        return algorithms.MAML(mlp, **common)
    if args.algo == "fomaml":
        return algorithms.MAML(mlp, meta_gradient=algorithms.FirstOrder(), **common)
    if args.algo == "imaml":
        return algorithms.MAML(mlp, meta_gradient=algorithms.Implicit(args.imaml_prox, args.imaml_cg_steps), **common)
    if args.algo == "reptile":
        return algorithms.Reptile(mlp, **common)
    if args.algo == "anil":
        return algorithms.ANIL(models.MLP(hidden=(40, 40), out=None), nn.Dense(1), **common)
    return algorithms.MetaSGD(mlp, **common)


def build_task(args: argparse.Namespace):
    """The task distribution named by ``--task``."""
    from metajax import tasks

    return tasks.Sinusoid(shots=args.shots, queries=args.query)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("shots", "meta_batch", "inner_steps", "steps", "log_every", "imaml_cg_steps"):
        value = getattr(args, name)
        if value <= 0:
            raise SystemExit(f"metajax train: --{name.replace('_', '-')} must be a positive integer, got {value}.")
    for name in ("query", "steps_per_call"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise SystemExit(f"metajax train: --{name.replace('_', '-')} must be a positive integer, got {value}.")
    if args.eval_tasks < 2:
        raise SystemExit(f"metajax train: --eval-tasks must be at least 2, got {args.eval_tasks}.")
    if args.eval_steps < 0:
        raise SystemExit(f"metajax train: --eval-steps must be non-negative, got {args.eval_steps}.")
    for name in ("inner_lr", "meta_lr", "imaml_prox"):
        value = getattr(args, name)
        if not value > 0:
            raise SystemExit(f"metajax train: --{name.replace('_', '-')} must be positive, got {value}.")


def machine() -> dict:
    """The machine a figure was measured on."""
    import jax

    device = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
    }


def train_command(args: argparse.Namespace) -> dict:
    """Run ``metajax train``; returns what it writes to ``OUT/metrics.json``."""
    _check_args(args)
    import jax
    import optax

    from metajax.evaluation import evaluate
    from metajax.training import train

    learner, task = build_learner(args), build_task(args)
    steps_per_call = args.steps_per_call or (100 if args.task == "sinusoid" else 1)
    args.out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    k_train, k_eval = jax.random.split(key)
    t0 = time.perf_counter()
    state, history = train(
        learner,
        task,
        optax.adam(args.meta_lr),
        key=k_train,
        num_steps=args.steps,
        meta_batch=args.meta_batch,
        steps_per_call=steps_per_call,
        log_every=args.log_every,
        task_batching=args.task_batching,
        progress=not args.no_progress,
    )
    train_seconds = time.perf_counter() - t0
    eval_summary = evaluate(learner, state.params, task, key=k_eval, num_tasks=args.eval_tasks, num_steps=args.eval_steps)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    config["steps_per_call"] = steps_per_call
    result = {
        "config": config,
        "machine": machine(),
        "train": {
            "seconds": train_seconds,
            "tasks_per_s": args.steps * args.meta_batch / train_seconds,
            "loss_first": history[0]["loss"],
            "loss_last": history[-1]["loss"],
            "curve": history,
        },
        "eval": eval_summary,
    }
    _write_json_atomic(args.out / "metrics.json", result)
    return result


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _summary_line(result: dict) -> str:
    ev = result["eval"]
    metric = next(k for k in ev if isinstance(ev[k], dict))
    steps = ev["num_steps"]
    shown = sorted({0, 1, steps} & set(range(steps + 1)))
    parts = [f"step {s}: {ev[metric]['mean'][s]:.4f} +- {ev[metric]['ci95'][s]:.4f}" for s in shown]
    return f"{metric} on {ev['num_tasks']} new tasks, " + ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metajax`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "train":
        result = train_command(args)
        print(_summary_line(result))
        print(f"wrote {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
