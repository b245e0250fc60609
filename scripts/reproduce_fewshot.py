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
import sys
from pathlib import Path

from metajax.app import cli

# Test episodes: 1000 on Omniglot (Snell et al. 2017), 600 on miniImageNet (Finn et al. 2017).
# Figures are the papers' test accuracies (%), with their 95% intervals where given.
PROTOCOLS = {
    # Finn et al. (2017), MAML, Table 1: strided Conv4-64, meta-batch 32 (5-way) / 16 (20-way),
    # 1 inner step lr 0.4 (5-way) / 5 steps lr 0.1 (20-way), 60k meta-steps, Adam 1e-3.
    "maml-omniglot-5w1s": dict(
        paper="MAML 98.7 +- 0.4 (Finn et al. 2017, Table 1)",
        argv="--algo maml --task omniglot --ways 5 --shots 1 --query 1 --meta-batch 32 --inner-steps 1 "
        "--inner-lr 0.4 --eval-steps 3 --steps 60000 --eval-tasks 1000",
        reduced_steps=2000,
    ),
    "maml-omniglot-20w1s": dict(
        paper="MAML 95.8 +- 0.3 (Finn et al. 2017, Table 1)",
        argv="--algo maml --task omniglot --ways 20 --shots 1 --query 1 --meta-batch 16 --inner-steps 5 "
        "--inner-lr 0.1 --eval-steps 5 --steps 60000 --eval-tasks 1000",
        reduced_steps=1000,
    ),
    # Snell et al. (2017), Prototypical Networks, Table 1: Conv4-64 max-pooled, 60-way training
    # episodes with 5 queries per class, test shot = train shot, Adam 1e-3 halved every 2000 episodes.
    "protonet-omniglot-5w1s": dict(
        paper="ProtoNets 98.8 (Snell et al. 2017, Table 1)",
        argv="--algo protonet --task omniglot --ways 5 --train-ways 60 --shots 1 --query 5 --meta-batch 1 "
        "--lr-decay-every 2000 --steps 20000 --eval-tasks 1000",
        reduced_steps=2000,
    ),
    "protonet-omniglot-20w1s": dict(
        paper="ProtoNets 96.0 (Snell et al. 2017, Table 1)",
        argv="--algo protonet --task omniglot --ways 20 --train-ways 60 --shots 1 --query 5 --meta-batch 1 "
        "--lr-decay-every 2000 --steps 20000 --eval-tasks 1000",
        reduced_steps=2000,
    ),
    "protonet-omniglot-20w5s": dict(
        paper="ProtoNets 98.9 (Snell et al. 2017, Table 1)",
        argv="--algo protonet --task omniglot --ways 20 --train-ways 60 --shots 5 --query 5 --meta-batch 1 "
        "--lr-decay-every 2000 --steps 20000 --eval-tasks 1000",
        reduced_steps=2000,
    ),
    # Vinyals et al. (2016), Matching Networks, Table 1 (no fine-tuning, cosine attention).
    "matchingnet-omniglot-5w1s": dict(
        paper="Matching Nets 98.1 (Vinyals et al. 2016, Table 1)",
        argv="--algo matchingnet --task omniglot --ways 5 --shots 1 --query 5 --meta-batch 32 "
        "--steps 20000 --eval-tasks 1000",
        reduced_steps=1000,
    ),
    # Mishra et al. (2018), SNAIL, Table 1: Conv4-64 max-pooled embedding, the support sequence and one
    # query per episode, Attention(64, 32), TC(128), Attention(256, 128), TC(128), Attention(512, 256).
    "snail-omniglot-5w1s": dict(
        paper="SNAIL 99.07 +- 0.16 (Mishra et al. 2018, Table 1)",
        argv="--algo snail --task omniglot --ways 5 --shots 1 --query 1 --meta-batch 32 "
        "--steps 40000 --eval-tasks 1000",
        reduced_steps=2000,
    ),
    "snail-omniglot-20w1s": dict(
        paper="SNAIL 97.64 +- 0.30 (Mishra et al. 2018, Table 1)",
        argv="--algo snail --task omniglot --ways 20 --shots 1 --query 1 --meta-batch 32 "
        "--steps 40000 --eval-tasks 1000",
        reduced_steps=1000,
    ),
    # The in-context Transformer (no paper of its own on Omniglot; SNAIL is the attention baseline):
    # the same embedding and episodes as SNAIL, width 64, 2 blocks, 4 heads.
    "transformer-omniglot-5w1s": dict(
        paper="no paper figure (SNAIL, the attention baseline: 99.07, Mishra et al. 2018, Table 1)",
        argv="--algo transformer --task omniglot --ways 5 --shots 1 --query 1 --meta-batch 32 "
        "--steps 40000 --eval-tasks 1000",
        reduced_steps=2000,
    ),
    # miniImageNet: MAML with 32 filters, 5 inner steps lr 0.01, meta-batch 4, 10 test steps;
    # ProtoNets with 30-way training episodes and 15 queries.
    "maml-miniimagenet-5w1s": dict(
        paper="MAML 48.70 +- 1.84 (Finn et al. 2017, Table 2)",
        argv="--algo maml --task miniimagenet --ways 5 --shots 1 --query 15 --meta-batch 4 --inner-steps 5 "
        "--inner-lr 0.01 --eval-steps 10 --steps 60000 --eval-tasks 600",
        reduced_steps=1000,
    ),
    "protonet-miniimagenet-5w1s": dict(
        paper="ProtoNets 49.42 +- 0.78 (Snell et al. 2017, Table 2)",
        argv="--algo protonet --task miniimagenet --ways 5 --train-ways 30 --shots 1 --query 15 --meta-batch 1 "
        "--lr-decay-every 2000 --steps 20000 --eval-tasks 600",
        reduced_steps=2000,
    ),
}


def protocol_argv(name: str, budget: str, steps: int | None, eval_tasks: int | None = None) -> list[str]:
    """``metajax train`` arguments of protocol ``name`` at ``budget`` (``paper`` or ``reduced``).

    ``steps`` and ``eval_tasks``, when given, replace the protocol's meta-steps and test episodes.
    """
    argv = PROTOCOLS[name]["argv"].split()
    if steps is None and budget == "reduced":
        steps = PROTOCOLS[name]["reduced_steps"]
    if steps is not None:
        argv[argv.index("--steps") + 1] = str(steps)
    if eval_tasks is not None:
        argv[argv.index("--eval-tasks") + 1] = str(eval_tasks)
    return argv


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
        result = cli.train_command(cli.build_parser().parse_args(run_argv))
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
            "machine": result["machine"],
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
