"""``metajax continual``: run continual learners on one stream, write ``OUT/metrics.json``.

Streams: ``rotated-fmnist`` / ``permuted-fmnist`` (domain-incremental Fashion-MNIST,
10 classes) and ``sine`` (OML's incremental sine waves, MSE). With ``--lifelong`` the
tasks are served by an OSAKA-style schedule (``--p-stay``, ``--mixture seen new ood``);
the OOD pool is the other Fashion-MNIST transformation. OML's representation is first
meta-trained (``--meta-steps``) on tasks disjoint from the stream's.

``OUT/metrics.json`` is rewritten after each learner (``pending`` lists those still to
run), OML's meta-training is checkpointed into ``OUT/checkpoints/oml`` every tenth of its
steps, and each learner's pass over the stream into ``OUT/checkpoints/stream-<learner>``
every ``--chunk-steps`` stream steps. ``--resume DIR`` (the ``--out`` of an interrupted run
with the same settings) keeps DIR's finished learners and continues OML's meta-training
and the interrupted pass from their newest checkpoints, so a killed run loses at most one
chunk of a pass and a tenth of the meta-training, and ends with the same results as an
uninterrupted one. Without ``--resume``, an ``--out`` holding a run is refused unless
``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from metajax import learner as registry
from metajax.app.errors import CommandError, check_finite, check_positive_ints, check_seed
from metajax.app.runs import (
    check_out,
    claim,
    machine,
    refuse_other_settings,
    resume_or_exit,
    settings,
    write_json_atomic,
)

LEARNERS = (*registry.names(family="continual"), "joint")
STREAMS = ("rotated-fmnist", "permuted-fmnist", "sine")
RESUMABLE_CHANGES = ("out", "learners")  # settings a resumed run may change


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``continual`` subcommand on an ``argparse`` subparsers object."""
    c = subparsers.add_parser("continual", help="continual learners on a task stream; write OUT/metrics.json")
    c.add_argument(
        "--learners", nargs="+", choices=LEARNERS, default=list(LEARNERS), help="learners to run (default: all)"
    )
    c.add_argument("--stream", choices=STREAMS, default="rotated-fmnist", help="task stream (default rotated-fmnist)")
    c.add_argument("--tasks", type=int, default=5, help="in-distribution tasks T (default 5)")
    c.add_argument("--train-per-task", type=int, default=200, help="training examples per task (default 200)")
    c.add_argument("--test-per-task", type=int, default=200, help="test examples per task (default 200)")
    c.add_argument("--batch-size", type=int, default=10, help="examples per stream step (default 10)")
    c.add_argument("--hidden", type=int, default=100, help="units of each of the 2 hidden layers (default 100)")
    c.add_argument("--lr", type=float, default=None, help="SGD step size of the learners (default 0.03; 0.003 on sine)")
    c.add_argument("--capacity", type=int, default=200, help="replay buffer slots (default 200)")
    c.add_argument("--replay-batch", type=int, default=10, help="replayed examples per update (default 10)")
    c.add_argument("--ewc-strength", type=float, default=None, help="EWC lambda (default 100; 1 on sine)")
    c.add_argument("--meta-steps", type=int, default=500, help="OML meta-training steps (default 500)")
    c.add_argument("--lifelong", action="store_true", help="OSAKA-style lifelong stream instead of a task sequence")
    c.add_argument("--stream-steps", type=int, default=300, help="lifelong stream length in steps (default 300)")
    c.add_argument("--p-stay", type=float, default=0.9, help="probability to stay on the task (default 0.9)")
    c.add_argument(
        "--mixture",
        type=float,
        nargs=3,
        default=[0.5, 0.5, 0.0],
        metavar=("SEEN", "NEW", "OOD"),
        help="weights of seen / new / OOD tasks on a switch (default 0.5 0.5 0)",
    )
    c.add_argument("--ood-tasks", type=int, default=2, help="OOD tasks in the lifelong pool (default 2)")
    c.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: $METAJAX_DATA)")
    c.add_argument(
        "--chunk-steps",
        type=int,
        default=50,
        help="stream steps per compiled chunk of a learner's pass; a checkpoint after each (default 50)",
    )
    c.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    c.add_argument("--out", type=Path, required=True, help="output directory")
    c.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the run whose --out was DIR: keep its finished learners, resume the interrupted one",
    )
    c.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its files only)")
    return c


def _check(args) -> None:
    check_finite(args)
    check_seed(args.seed)
    names = ("tasks", "train_per_task", "test_per_task", "batch_size", "hidden", "capacity", "replay_batch")
    check_positive_ints(args, (*names, "meta_steps", "stream_steps", "chunk_steps"))
    if args.ood_tasks < 0:
        raise CommandError(f"--ood-tasks must be a non-negative integer, got {args.ood_tasks}.")
    if args.train_per_task % args.batch_size:
        raise CommandError(f"--batch-size {args.batch_size} must divide --train-per-task {args.train_per_task}.")
    # Regression targets (sine amplitudes up to 5) give gradients and Fisher values ~10-100x
    # those of classification: the classification defaults diverge there (EWC, La-MAML).
    sine = args.stream == "sine"
    if args.lr is None:
        args.lr = 0.003 if sine else 0.03
    if args.ewc_strength is None:
        args.ewc_strength = 1.0 if sine else 100.0
    for name in ("lr", "ewc_strength"):
        if not getattr(args, name) > 0:
            raise CommandError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if not 0.0 <= args.p_stay <= 1.0:
        raise CommandError(f"--p-stay must be in [0, 1], got {args.p_stay}.")
    if min(args.mixture) < 0 or sum(args.mixture) <= 0:
        raise CommandError(f"--mixture needs non-negative weights with a positive sum, got {args.mixture}.")
    check_out(args.out, args.resume, args.overwrite)


def build_streams(args, key):
    """``(sequence, ood_pool or None, meta_pool, kind)``: the stream's tasks, OOD tasks, OML's meta-training tasks."""
    import jax
    import numpy as np

    from metajax import tasks

    k_seq, k_ood, k_meta = jax.random.split(key, 3)
    if args.stream == "sine":
        seq = tasks.incremental_sine(
            k_seq,
            num_functions=args.tasks,
            train_per_function=args.train_per_task,
            test_per_function=args.test_per_task,
        )
        return seq, None, None, "regression"
    from metajax.datasets import load_fashion_mnist

    data = load_fashion_mnist("train", root=args.data_root).images  # [10, 6000, 28, 28, 1]
    images = data.reshape(-1, *data.shape[2:])
    labels = np.repeat(np.arange(data.shape[0]), data.shape[1])
    transform = "rotation" if args.stream == "rotated-fmnist" else "permutation"
    other = "permutation" if transform == "rotation" else "rotation"
    make = lambda k, t, n: flatten(
        tasks.domain_incremental(
            k,
            images,
            labels,
            num_tasks=n,
            train_per_task=args.train_per_task,
            test_per_task=args.test_per_task,
            transform=t,
        )
    )
    ood = make(k_ood, other, args.ood_tasks) if args.lifelong and args.ood_tasks > 0 else None
    return make(k_seq, transform, args.tasks), ood, make(k_meta, transform, 20), "classification"


def flatten(seq):
    """Images ``[T, N, H, W, C]`` of a sequence as vectors ``[T, N, H*W*C]``."""
    return seq.replace(
        train_x=seq.train_x.reshape(*seq.train_x.shape[:2], -1), test_x=seq.test_x.reshape(*seq.test_x.shape[:2], -1)
    )


def build_learner(name: str, args, kind: str):
    """The registered learner ``name`` on a 2-hidden-layer MLP (OML: its layers as representation, a linear head).

    ``joint`` is fine-tuning, run on the shuffled stream (the drivers' ``iid=True``).
    """
    from metajax import models

    spec = registry.Spec(
        kind,
        1 if kind == "regression" else 10,
        lambda out: models.MLP(hidden=(args.hidden, args.hidden), out=out),
        head=lambda out: models.MLP(hidden=(), out=out),
        inner_lr=args.lr,
    )
    options = dict(capacity=args.capacity, replay_batch=args.replay_batch, strength=args.ewc_strength, reset=False)
    return registry.build("finetune" if name == "joint" else name, spec, **options)


def meta_train_oml(learner, meta_pool, args, key):
    """OML's parameters meta-trained on trajectories over ``meta_pool``'s tasks, and the training log.

    Checkpoints go to ``OUT/checkpoints/oml`` every tenth of ``--meta-steps``, each with the
    log so far; with ``--resume DIR``, training continues from ``DIR/checkpoints/oml``'s
    newest checkpoint and its log.

    Returns:
        ``(params, history, resumed_from)``.
    """
    import optax

    from metajax import tasks
    from metajax.checkpoint import Checkpointer
    from metajax.training import init_state, train

    shots = max(args.batch_size, 10)
    task = tasks.Trajectories(
        meta_pool.train_x, meta_pool.train_y, tasks=2, shots=shots, remember=2 * shots, kind="classification"
    )
    optimizer = optax.adam(1e-3)
    state, record = init_state(learner, task, optimizer, key), {"history": []}
    saved = None if args.resume is None else args.resume / "checkpoints" / "oml"
    if saved is not None and saved.is_dir():
        state, found = resume_or_exit(saved, state, "OML's meta-training")
        if found is not None:
            record["history"] = [e for e in found["history"] if e["step"] <= int(state.step)]
    # --out holds no other run's checkpoints (check_out), so this run's own are the only ones there.
    checkpointer = Checkpointer(args.out / "checkpoints" / "oml", every=max(1, args.meta_steps // 10))
    resumed_from = int(state.step)
    try:
        state, _ = train(
            learner,
            task,
            optimizer,
            key=key,
            state=state,
            num_steps=args.meta_steps,
            meta_batch=1,
            steps_per_call=50,
            log_every=max(args.meta_steps // 2, 50),
            progress=False,
            on_log=lambda _, entry: record["history"].append(entry),
            checkpointer=checkpointer,
            checkpoint_record=record,
        )
    finally:
        checkpointer.close()
    return state.params, record["history"], resumed_from


def run(args: argparse.Namespace) -> dict:
    """Run ``metajax continual``; returns what it writes to ``OUT/metrics.json``."""
    _check(args)
    import jax
    import numpy as np

    from metajax import continual as C
    from metajax import tasks

    config = settings(args)
    earlier = {} if args.resume is None else _earlier_learners(args.resume, config)
    key = jax.random.key(args.seed)
    k_data, k_sched, k_meta, k_run = jax.random.split(key, 4)
    seq, ood, meta_pool, kind = build_streams(args, k_data)
    if "oml" in args.learners and "oml" not in earlier and meta_pool is None:
        raise CommandError("--learners oml needs a Fashion-MNIST stream (meta-training tasks).")
    metric = "mse" if kind == "regression" else "accuracy"
    claim(args.out, args.overwrite)  # the first change to the folder
    result: dict[str, Any] = {"config": config, "machine": machine(), "metric": metric, "learners": {}, "pending": []}
    schedule, pool = None, seq  # pool: the tasks the stream draws from
    if args.lifelong:
        pool = seq if ood is None else seq.concatenate(ood)
        stream = tasks.LifelongStream(args.p_stay, tuple(args.mixture))
        schedule = stream.schedule(
            k_sched, args.stream_steps, num_tasks=args.tasks, num_ood=pool.num_tasks - args.tasks
        )
        sw = np.asarray(schedule.switched)
        result["schedule"] = {
            "steps": int(sw.size),
            "switches": int(sw[1:].sum()),
            "source_counts": np.bincount(np.asarray(schedule.source)[sw], minlength=3).tolist(),
        }
    for name in args.learners:
        if name in earlier:
            result["learners"][name] = earlier[name]
            _plot(result, name, args.out)
        else:
            result["pending"].append(name)
    write_json_atomic(args.out / "metrics.json", result)  # from here on the run can be resumed
    for name in list(result["pending"]):
        learner = build_learner(name, args, kind)
        t0 = time.perf_counter()
        state, extra = None, {}
        if name == "oml":
            state, history, resumed_from = meta_train_oml(learner, meta_pool, args, k_meta)
            extra["meta_train"] = {"steps": args.meta_steps, "resumed_from": resumed_from, "last": history[-1]}
        out = _stream_pass(C, name, learner, args, pool, schedule, k_run, state, metric)
        if schedule is not None:  # --lifelong
            extra["online_by_source"] = out["online_by_source"]
            extra["introduced"] = out["introduced"]
        result["learners"][name] = {
            **{k: (None if v is None else float(v)) for k, v in out["summary"].items()},
            "online_accuracy" if metric == "accuracy" else "online_mse": float(out["online_cumulative"][-1]),
            "R": [[float(v) if np.isfinite(v) else None for v in row] for row in out["R"]],
            "seconds": time.perf_counter() - t0,
            "stream_resumed_from": out["resumed_from"],
            **extra,
        }
        result["pending"].remove(name)
        _plot(result, name, args.out)
        write_json_atomic(args.out / "metrics.json", result)
    result["learners"] = {name: result["learners"][name] for name in args.learners}
    write_json_atomic(args.out / "metrics.json", result)
    return result


def _stream_pass(C, name, learner, args, pool, schedule, key, state, metric) -> dict:
    """Learner ``name``'s pass over ``pool`` (the sequence, or the lifelong pool with ``schedule``).

    Checkpointed every ``--chunk-steps`` stream steps; with ``--resume DIR``, continued from
    DIR's newest checkpoint of this learner's pass, if there is one.
    """
    from metajax.checkpoint import Checkpointer

    folder = f"checkpoints/stream-{name}"
    saved = None if args.resume is None else args.resume / folder
    resume = None
    if saved is not None and saved.is_dir():
        resume = lambda like: resume_or_exit(saved, like, f"{name}'s pass over the stream")[0]
    checkpointer = Checkpointer(args.out / folder, every=args.chunk_steps)
    common = dict(
        key=key,
        batch_size=args.batch_size,
        state=state,
        metric=metric,
        iid=(name == "joint"),
        chunk=args.chunk_steps,
        checkpointer=checkpointer,
        resume=resume,
    )
    try:
        if schedule is not None:  # --lifelong
            return C.run_lifelong(learner, pool, schedule, num_tasks=args.tasks, **common)
        return C.run_sequence(learner, pool, **common)
    finally:
        checkpointer.close()


def _earlier_learners(run_dir: Path, config: dict) -> dict:
    """The finished learners' results of the run ``run_dir``, after checking it ran with ``config``."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise CommandError(f"--resume {run_dir} holds no metrics.json; pass the --out of an earlier run.")
    earlier = json.loads(path.read_text())
    refuse_other_settings(run_dir, earlier["config"], config, allowed=RESUMABLE_CHANGES)
    return earlier["learners"]


def _plot(result: dict, name: str, out: Path) -> None:
    """``OUT/R_<name>.png``, the heatmap of a classification learner's accuracy matrix."""
    import numpy as np

    from metajax import continual as C

    if result["metric"] == "accuracy":
        R = np.array([[np.nan if v is None else v for v in row] for row in result["learners"][name]["R"]])
        C.plot_accuracy_matrix(R, out / f"R_{name}.png", title=name)


def table(result: dict) -> str:
    """A plain-text table of the learners' metrics."""
    cols = ("acc", "bwt", "fwt", "forgetting", "learning_accuracy", "online_accuracy")
    fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"
    lines = [f"{'learner':10s} " + " ".join(f"{c[:8]:>8s}" for c in cols)]
    for name, r in result["learners"].items():
        lines.append(f"{name:10s} " + " ".join(f"{fmt(r.get(c)):>8s}" for c in cols))
    return "\n".join(lines)
