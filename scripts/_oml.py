"""What the OML scripts share: training OML and its pretraining baseline, and the online step-size search."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np
import optax

import metajax


def train_both(runs: dict, *, steps: int, meta_lr: float, steps_per_call: int) -> tuple[dict, dict]:
    """Train each ``name: (learner, task, key)`` for ``steps`` Adam(``meta_lr``) steps at meta-batch 1.

    Returns:
        ``({name: params}, {"train_<name>": {"seconds", "curve"}})``.
    """
    params, results = {}, {}
    for name, (learner, task, key) in runs.items():
        t0 = time.perf_counter()
        state, history = metajax.train(
            learner,
            task,
            optax.adam(meta_lr),
            key=key,
            num_steps=steps,
            meta_batch=1,
            steps_per_call=steps_per_call,
            log_every=max(steps // 5, steps_per_call),
            progress=False,
        )
        params[name] = state.params
        results[f"train_{name}"] = {"seconds": round(time.perf_counter() - t0, 1), "curve": history}
    return params, results


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
