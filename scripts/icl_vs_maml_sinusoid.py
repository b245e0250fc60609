"""The in-context Transformer beside MAML on sinusoid regression, on the same 600 test tasks; prints JSON.

Both are ``metajax train`` runs with the MAML paper's sinusoid protocol (MLP 1-40-40,
meta-batch 25, Adam 1e-3, ``--steps`` meta-steps); the Transformer reads the support set
through the same MLP as its embedding (``dim`` 64, 2 blocks, 4 heads) and takes no
gradient step at test time, MAML takes 1 and 10. The same seed draws the same test tasks
for both. One JSON object per K, with the machine:

    python scripts/icl_vs_maml_sinusoid.py --shots 5 10 --steps 70000 --out runs/icl > icl.jsonl
    python scripts/icl_vs_maml_sinusoid.py --plot icl.jsonl --figure docs/icl-vs-maml-sinusoid.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metajax.app import cli


def plot(rows: list[dict], path: Path) -> None:
    """MSE against adaptation steps, one panel per K: MAML's curve, the Transformer's single point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 3.4), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        for algo, label in (("maml", "MAML (gradient steps)"), ("transformer", "Transformer (in context)")):
            mean, ci95 = row[algo]["mse_by_step"], row[algo]["ci95_by_step"]
            ax.errorbar(range(len(mean)), mean, yerr=ci95, marker="o", markersize=3, capsize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("adaptation steps at test time")
        ax.set_ylabel("query MSE (600 tasks, 95% interval)")
        ax.set_title(f"sinusoid K={row['shots']}, {row['steps']} meta-steps")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10], help="K values (default 5 10)")
    parser.add_argument("--steps", type=int, default=70000, help="meta-steps of each learner (default 70000)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    parser.add_argument("--out", type=Path, help="folder of the runs")
    parser.add_argument("--plot", type=Path, help="draw --figure from these printed results instead of training")
    parser.add_argument("--figure", type=Path, help="PNG of --plot's results")
    args = parser.parse_args()
    if args.plot is not None:
        if args.figure is None:
            parser.error("--plot needs --figure")
        plot([json.loads(line) for line in args.plot.read_text().splitlines() if line.strip()], args.figure)
        return
    if args.out is None:
        parser.error("--out is required to train")
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
