"""The in-context Transformer beside MAML on sinusoid regression, on the same 600 test tasks; prints JSON.

Both are ``metajax train`` runs with the MAML paper's sinusoid protocol (MLP 1-40-40,
meta-batch 25, Adam 1e-3, ``--steps`` meta-steps); the Transformer reads the support set
through the same MLP as its embedding (``dim`` 64, 2 blocks, 4 heads) and takes no
gradient step at test time, MAML takes 1 and 10. The same seed draws the same test tasks
for both. One JSON object per K, with the machine:

    python scripts/icl_vs_maml_sinusoid.py --shots 5 10 --steps 70000 --out runs/icl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metajax.app import cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10], help="K values (default 5 10)")
    parser.add_argument("--steps", type=int, default=70000, help="meta-steps of each learner (default 70000)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs")
    args = parser.parse_args()
    for k in args.shots:
        row: dict = {"shots": k, "steps": args.steps, "seed": args.seed}
        for algo in ("transformer", "maml"):
            argv = ["train", "--algo", algo, "--shots", str(k), "--steps", str(args.steps), "--seed", str(args.seed)]
            argv += ["--out", str(args.out / f"{algo}-k{k}"), "--no-progress"]
            result = cli.train_command(cli.build_parser().parse_args(argv))
            mse = result["eval"]["mse"]
            row[algo] = {
                "mse_by_step": [round(m, 4) for m in mse["mean"]],
                "ci95_by_step": [round(c, 4) for c in mse["ci95"]],
                "train_seconds": round(result["train"]["seconds"], 1),
                "tasks_per_s": round(result["train"]["tasks_per_s"], 1),
            }
            row["machine"] = result["machine"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
