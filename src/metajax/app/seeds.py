"""``metajax train --seeds 0,1,2``: one run per seed, their evaluations aggregated across seeds.

Each seed is a complete run of its own in ``OUT/seed-<s>`` (``metrics.json``, log,
checkpoints). ``OUT/metrics.json`` then holds, per adaptation step, the mean over seeds of
each seed's mean metric, its standard deviation and the Student-t 95% interval across seeds
(what papers that report several seeds give), and each seed's figures. ``--resume OUT``
continues each seed from its newest checkpoint (a finished one is only evaluated again)
and starts the seeds that have none.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from metajax.app import launch
from metajax.app.errors import SEED_BOUND, CommandError
from metajax.app.runs import check_out, claim, machine, settings, write_json_atomic


def _one_seed(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    """The flags of ``seed``'s run in ``OUT/seed-<seed>``: resumed if it has a checkpoint, else started afresh."""
    one = argparse.Namespace(**{**vars(args), "seed": seed, "seeds": None, "out": args.out / f"seed-{seed}"})
    if args.resume is not None:
        earlier = args.resume / f"seed-{seed}"
        one.resume = earlier if _has_checkpoint(earlier / "checkpoints") else None
        # A seed of this run stopped before its first checkpoint left files but nothing to continue: start it again.
        same = earlier.absolute().resolve() == one.out.absolute().resolve()
        one.overwrite = args.overwrite or (one.resume is None and same and one.out.is_dir())
    return one


def _has_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a finished checkpoint (orbax names each by its step; read without JAX, which a
    multi-host run must not start before it joins)."""
    return folder.is_dir() and any(p.name.isdigit() and p.is_dir() for p in folder.iterdir())


def parse(text: str) -> list[int]:
    """``--seeds``: comma-separated distinct seeds in ``[0, 2**32)``, at least two."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if len(seeds) < 2 or len(set(seeds)) < len(seeds) or not all(0 <= s < SEED_BOUND for s in seeds):
        raise argparse.ArgumentTypeError(f"expected at least two distinct seeds in [0, 2**32), got {text!r}")
    return seeds


def run(
    args: argparse.Namespace, train: Callable[[argparse.Namespace], dict], check: Callable[[argparse.Namespace], None]
) -> dict:
    """Train one run per ``args.seeds`` with ``train`` (``metajax train``'s command); returns the aggregate.

    ``check`` (the command's flag check, which also joins a multi-host run) sees the first
    seed's flags before anything is written.
    """
    from metajax.evaluation import seed_interval

    if args.seed != 0:
        raise CommandError(f"--seed {args.seed} and --seeds both set the seed; pass one of them.")
    out = args.out
    runs = [_one_seed(args, seed) for seed in args.seeds]
    check(argparse.Namespace(**vars(runs[0])))
    primary = launch.is_primary(args)
    if primary:  # in a multi-host run, process 0 alone owns the run folder
        check_out(out, args.resume, args.overwrite)
        claim(out, overwrite=args.overwrite)  # each seed's own run clears its folder with --overwrite
    results, t0 = {}, time.perf_counter()
    for seed, one in zip(args.seeds, runs, strict=True):
        results[seed] = train(one)
    seconds = time.perf_counter() - t0
    first = results[args.seeds[0]]["eval"]
    metrics = [k for k, v in first.items() if isinstance(v, dict) and "mean" in v]
    summary = {
        k: {
            **seed_interval([results[s]["eval"][k]["mean"] for s in args.seeds]),
            "per_seed": {str(s): results[s]["eval"][k]["mean"] for s in args.seeds},
        }
        for k in metrics
    }
    result = {
        "config": {**settings(args), "seeds": args.seeds},
        "machine": machine(),
        "runs": {str(s): f"seed-{s}" for s in args.seeds},
        "train": {"seconds": seconds, "steps": {str(s): results[s]["train"]["steps"] for s in args.seeds}},
        "eval": {
            **summary,
            "num_seeds": len(args.seeds),
            "num_tasks": first["num_tasks"],
            "num_steps": first["num_steps"],
        },
    }
    if primary:
        write_json_atomic(out / "metrics.json", result)
    return result
