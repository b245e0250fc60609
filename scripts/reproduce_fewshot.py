"""Few-shot paper protocols on Omniglot and miniImageNet; prints one JSON line per protocol.

Each protocol is a ``metajax train`` run with the paper's settings; ``--budget reduced``
cuts the meta-steps (and ``--time-limit`` caps the wall time) for machines without an
accelerator. Every line carries the protocol, the paper's figure (cited, not ours), our
accuracy with its 95% interval after each test-time step, the steps actually trained,
and the machine.

    python scripts/reproduce_fewshot.py --protocol protonet-omniglot-5w1s --time-limit 30
    python scripts/reproduce_fewshot.py --protocol maml-omniglot-5w1s --budget reduced
    python scripts/reproduce_fewshot.py --protocol all --budget paper    # accelerator

Data: ``--data-root`` or ``$METAJAX_DATA`` (see ``metajax.datasets``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from metajax.app import cli, config, process

# Each protocol is a config in configs/ (its flags, the paper's setup in comments, and under
# ``reference`` the paper's test accuracy (%), cited, and the meta-steps of the reduced budget).
# Test episodes: 1000 on Omniglot (Snell et al. 2017), 600 on miniImageNet (Finn et al. 2017).
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PROTOCOLS = {
    path.stem: {"path": path, **read[config.REFERENCE]}
    for path, read in ((path, config.read(path)) for path in sorted(CONFIGS.glob("*.yaml")))
    if config.REFERENCE in read
}


def protocol_argv(name: str, budget: str, steps: int | None, eval_tasks: int | None = None) -> list[str]:
    """``metajax train`` arguments of protocol ``name`` at ``budget`` (``paper`` or ``reduced``).

    ``steps`` and ``eval_tasks``, when given, replace the protocol's meta-steps and test episodes.
    """
    argv = ["--config", str(PROTOCOLS[name]["path"])]
    if steps is None and budget == "reduced":
        steps = PROTOCOLS[name]["reduced-steps"]
    if steps is not None:
        argv += ["--steps", str(steps)]
    if eval_tasks is not None:
        argv += ["--eval-tasks", str(eval_tasks)]
    return argv


def commit() -> str | None:
    """The checkout's commit (``None`` outside git); a trailing ``+`` marks uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen protocols and print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="protonet-omniglot-5w1s", help=f"one of {sorted(PROTOCOLS)}, or all")
    parser.add_argument(
        "--budget", choices=("paper", "reduced"), default="reduced", help="meta-steps (default reduced)"
    )
    parser.add_argument("--steps", type=int, default=None, help="meta-steps, overriding --budget")
    parser.add_argument("--time-limit", type=float, default=None, help="minutes of meta-training per protocol")
    parser.add_argument(
        "--eval-tasks", type=int, default=None, help="test episodes, overriding the protocol's (smoke runs)"
    )
    parser.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: $METAJAX_DATA)")
    parser.add_argument("--out", type=Path, default=Path("runs/fewshot"), help="folder of the runs' metrics.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    process.configure()  # as `metajax train` does
    code = commit()  # the code this process imported: read now, not after the runs, when the checkout may have moved
    names = sorted(PROTOCOLS) if args.protocol == "all" else args.protocol.split(",")
    for name in names:
        if name not in PROTOCOLS:
            parser.error(f"--protocol: unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)} or all")
    for name in names:
        run_argv = ["train", *protocol_argv(name, args.budget, args.steps, args.eval_tasks), "--seed", str(args.seed)]
        run_argv += ["--out", str(args.out / name), "--log-every", "100"]
        if args.time_limit is not None:
            run_argv += ["--time-limit", str(args.time_limit)]
        if args.data_root is not None:
            run_argv += ["--data-root", str(args.data_root)]
        if not args.progress:
            run_argv.append("--no-progress")
        result = cli.train_command(cli.parse(run_argv))
        accuracy = result["eval"]["accuracy"]
        line = {
            "protocol": name,
            "paper": PROTOCOLS[name]["paper"],
            "argv": " ".join(["metajax", *run_argv]),
            "budget": args.budget if args.steps is None else f"{args.steps} steps",
            "steps_trained": result["train"]["steps"],
            "train_minutes": result["train"]["seconds"] / 60,
            "accuracy_percent": [100 * a for a in accuracy["mean"]],
            "ci95_percent": [100 * c for c in accuracy["ci95"]],
            "test_episodes": result["eval"]["num_tasks"],
            "machine": {**result["machine"], "load_avg_at_end": list(os.getloadavg())},
            "commit": code,
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
