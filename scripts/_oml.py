"""What the OML scripts share: training OML and its pretraining baseline, and the online step-size search."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import optax

import metajax
from metajax.app.runs import resume_or_exit
from metajax.checkpoint import Checkpointer
from metajax.training import init_state


def train_both(
    runs: dict, *, steps: int, meta_lr: float, steps_per_call: int, checkpoints: Path | None = None, record: dict
) -> tuple[dict, dict]:
    """Train each ``name: (learner, task, key)`` for ``steps`` Adam(``meta_lr``) steps at meta-batch 1.

    With ``checkpoints`` (a folder), each run saves a checkpoint every tenth of ``steps``
    into ``checkpoints/<name>`` and continues from the newest one found there, after
    checking that it was written with the same ``record`` (the script's configuration).

    Returns:
        ``({name: params}, {"train_<name>": {"seconds", "resumed_from", "curve"}})``.
    """
    params, results = {}, {}
    for name, (learner, task, key) in runs.items():
        t0 = time.perf_counter()
        optimizer = optax.adam(meta_lr)
        state, checkpointer = init_state(learner, task, optimizer, key), None
        if checkpoints is not None:
            directory = Path(checkpoints) / name
            state = resume_or_exit(directory, state, "OML script (pass another --checkpoints folder)", record)[0]
            checkpointer = Checkpointer(directory, every=max(1, steps // 10))
        resumed_from = int(state.step)
        state, history = metajax.train(
            learner,
            task,
            optimizer,
            key=key,
            state=state,
            num_steps=steps,
            meta_batch=1,
            steps_per_call=steps_per_call,
            log_every=max(steps // 5, steps_per_call),
            progress=False,
            checkpointer=checkpointer,
            checkpoint_record=record,
        )
        if checkpointer is not None:
            checkpointer.close()
        params[name] = state.params
        results[f"train_{name}"] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "resumed_from": resumed_from,
            "curve": history,
        }
    return params, results


def training_record(args, **resolved) -> dict:
    """What a checkpoint must have been trained with: the script's arguments, less those of evaluation only."""
    evaluation_only = ("budget", "runs", "classes", "checkpoints", "data_root")
    return {**{k: v for k, v in vars(args).items() if k not in evaluation_only}, **resolved}


def search_step_size(run: Callable, lrs, *, higher_is_better: bool) -> tuple[float, dict]:
    """Run ``run(lr) -> (train_score [runs], test_metric [runs, ...])`` for each ``lr``; pick one by training score.

    As in OML's evaluation, the step size is chosen on the training stream only (no test
    data); a step size whose training score is NaN (diverged) is never picked.

    Returns:
        ``(best_lr, {lr: (train_score, test_metric)})`` as NumPy arrays.
    """
    per_lr = {lr: jax.device_get(run(lr)) for lr in lrs}
    worst = -np.inf if higher_is_better else np.inf
    score = {lr: float(np.nan_to_num(np.mean(per_lr[lr][0]), nan=worst)) for lr in lrs}
    best = (max if higher_is_better else min)(lrs, key=score.__getitem__)
    return best, per_lr
