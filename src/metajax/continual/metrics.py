"""Lifelong-learning metrics over the accuracy matrix ``R``.

Convention (Lopez-Paz & Ranzato, 2017, GEM): with ``T`` tasks learned in order,
``R`` has shape ``[T + 1, T]``. Row 0 is the model before any learning (the random
initialisation, GEM's vector ``b``); row ``i >= 1`` holds the test accuracy on every task
``j`` after learning tasks ``1..i``. Tasks are 1-indexed in the formulas and 0-indexed in
the array, so "task ``j``'s accuracy right after learning it" is ``R[j, j - 1]``.

Where papers differ:

* **BWT and FWT average over ``T - 1`` tasks** (GEM): BWT leaves out the last task
  (nothing is learned after it), FWT the first (nothing is learned before it). Some
  later papers divide by ``T`` instead, counting the last task's (zero) backward
  transfer; pass ``average="T"`` for that.
* **Forgetting** follows Chaudhry et al. (2018, RWalk): for each task ``j < T`` the
  drop from its best accuracy at any earlier row ``l in 1..T-1`` (max-based, not the
  accuracy right after learning it) to the final accuracy, averaged over ``T - 1`` tasks.
* **Learning accuracy** (Riemer et al., 2019, MER) is ``mean_j R[j, j-1]``, the accuracy
  on each task right after learning it, over all ``T`` tasks.
* **Online cumulative accuracy** is the accuracy on each incoming batch *before* the
  learner updates on it, averaged over the stream so far (the "online accuracy" of OSAKA,
  Caccia et al. 2020).

All functions are plain NumPy on host arrays (they run once per experiment).
"""

from __future__ import annotations

import numpy as np

from metajax._checks import check_choice


def check_accuracy_matrix(R) -> np.ndarray:
    """``R`` as a float64 array, after checking it is ``[T + 1, T]`` with ``T >= 1`` and finite.

    Raises:
        ValueError: naming the shape or the first non-finite entry.
    """
    R = np.asarray(R, np.float64)
    if R.ndim != 2 or R.shape[1] < 1 or R.shape[0] != R.shape[1] + 1:
        raise ValueError(
            f"R must have shape [T + 1, T] (row 0: the random initialisation, row i: after learning task i), "
            f"got shape {R.shape}."
        )
    bad = np.argwhere(~np.isfinite(R))
    if bad.size:
        i, j = bad[0]
        raise ValueError(f"R must be finite, got R[{i}, {j}] = {R[i, j]}.")
    return R


def average_accuracy(R) -> float:
    """ACC: mean final accuracy over all tasks, ``1/T sum_j R[T, j]``."""
    R = check_accuracy_matrix(R)
    return float(R[-1].mean())


def backward_transfer(R, *, average: str = "T-1") -> float:
    """BWT: ``1/(T-1) sum_{j<T} (R[T, j] - R[j, j])``; negative values are forgetting.

    Args:
        R: the accuracy matrix ``[T + 1, T]``.
        average: ``"T-1"`` (GEM) or ``"T"`` (divide the same sum by ``T``).

    Returns:
        The backward transfer; 0.0 for a single task.
    """
    R = check_accuracy_matrix(R)
    return _mean_transfer(R[-1, :-1] - np.diag(R[1:])[:-1], average)


def forward_transfer(R, *, average: str = "T-1") -> float:
    """FWT: ``1/(T-1) sum_{j>=2} (R[j-1, j] - b_j)`` with ``b = R[0]``, the random initialisation.

    Measures how learning tasks ``1..j-1`` helps task ``j`` zero-shot.

    Args:
        R: the accuracy matrix ``[T + 1, T]``.
        average: ``"T-1"`` (GEM) or ``"T"``.

    Returns:
        The forward transfer; 0.0 for a single task.
    """
    R = check_accuracy_matrix(R)
    return _mean_transfer(np.diag(R)[1:] - R[0, 1:], average)


def _mean_transfer(terms: np.ndarray, average: str) -> float:
    """The ``T - 1`` per-task transfers ``terms`` summed and divided by ``T - 1`` or ``T``; 0.0 if ``T == 1``."""
    check_choice("average", average, ("T-1", "T"))
    if terms.size == 0:
        return 0.0
    return float(terms.sum() / (terms.size if average == "T-1" else terms.size + 1))


def learning_accuracy(R) -> float:
    """LA: ``1/T sum_j R[j, j]`` (1-indexed), accuracy on each task right after learning it."""
    R = check_accuracy_matrix(R)
    return float(np.diag(R[1:]).mean())


def forgetting(R) -> float:
    """Average forgetting (Chaudhry et al., 2018): ``1/(T-1) sum_{j<T} max_{l in 1..T-1} R[l, j] - R[T, j]``.

    As in the paper, the maximum runs over every row ``l = 1..T-1`` (rows before task
    ``j`` was learned included; they matter only when a task is partly solved zero-shot)
    and never over row 0, the random initialisation. 0.0 for a single task.
    """
    R = check_accuracy_matrix(R)
    T = R.shape[1]
    if T == 1:
        return 0.0
    drops = [R[1:T, j].max() - R[T, j] for j in range(T - 1)]
    return float(np.mean(drops))


def online_cumulative_accuracy(correct) -> np.ndarray:
    """Running mean of per-step accuracies measured before each update.

    Args:
        correct: ``[steps]`` (or ``[steps, batch]``) accuracy or 0/1 correctness of each
            incoming batch (example) under the parameters *before* learning from it.

    Returns:
        ``[steps]``: entry ``t`` is the mean over steps ``0..t``.
    """
    correct = np.asarray(correct, np.float64)
    if correct.ndim == 0 or correct.shape[0] == 0:
        raise ValueError(f"correct must have a leading steps axis of size >= 1, got shape {correct.shape}.")
    per_step = correct.reshape(correct.shape[0], -1).mean(1)
    return np.cumsum(per_step) / np.arange(1, per_step.size + 1)


def summarize(R, *, average: str = "T-1") -> dict[str, float]:
    """All matrix metrics at once: ``acc``, ``bwt``, ``fwt``, ``learning_accuracy``, ``forgetting``."""
    return {
        "acc": average_accuracy(R),
        "bwt": backward_transfer(R, average=average),
        "fwt": forward_transfer(R, average=average),
        "learning_accuracy": learning_accuracy(R),
        "forgetting": forgetting(R),
    }
