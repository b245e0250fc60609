"""2D navigation: MAML-RL beside the pretrained and random baselines (MAML's Figure 5) on the same new tasks.

Each learner is a ``metajax train --task nav2d`` run; the same seed draws the same test
tasks for all of them. ``collect`` gathers the runs' ``metrics.json`` into one JSON
object (what ``docs/results/nav2d-cpu.json`` holds); ``table`` prints the README's table
from it::

    metajax train --task nav2d --algo maml-rl --steps 500 --eval-tasks 100 --out runs/nav2d/maml-rl
    metajax train --task nav2d --algo pretrained --steps 500 --eval-tasks 100 --out runs/nav2d/pretrained
    metajax train --task nav2d --algo random --eval-tasks 100 --out runs/nav2d/random
    python scripts/rl_nav2d.py collect runs/nav2d --note "..." > docs/results/nav2d-cpu.json
    python scripts/rl_nav2d.py table docs/results/nav2d-cpu.json
    python scripts/rl_nav2d.py plot docs/results/nav2d-cpu.json docs/nav2d-return.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

LABELS = {
    "maml-rl": "MAML-RL (DiCE, second order)",
    "maml-rl-fo": "MAML-RL (first order)",
    "pretrained": "pretrained + fine-tuning",
    "random": "random init + fine-tuning",
}


def env_steps_per_task(config: dict) -> int:
    """Environment steps one task takes in a meta-step: episodes before, during and after adaptation."""
    inner = config["inner_steps"] if config["algo"] == "maml-rl" else 0
    return config["episodes"] * config["horizon"] * (inner + 1)


def collect(runs: Path, note: str) -> dict:
    """``{"note", "runs": {name: run}}`` of the run folders under ``runs`` that hold a ``metrics.json``.

    Each run keeps its config, machine, evaluation and training totals, and adds the
    steady-state ``env_steps_per_s_steady``: the median over the logged intervals after
    the first (which includes compilation).
    """
    out: dict = {"note": note, "runs": {}}
    for path in sorted(runs.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        train = {k: v for k, v in metrics["train"].items() if k != "curve"}
        later = [entry["tasks_per_s"] for entry in metrics["train"]["curve"][1:]]
        if later:
            train["env_steps_per_s_steady"] = statistics.median(later) * env_steps_per_task(metrics["config"])
        train["curve"] = [{"step": e["step"], "return": e["return"]} for e in metrics["train"]["curve"]]
        out["runs"][path.parent.name] = {
            "config": metrics["config"],
            "machine": metrics["machine"],
            "train": train,
            "eval": metrics["eval"],
        }
    return out


def table(result: dict) -> str:
    """The markdown table: return before and after each adaptation step, meta-steps, time, env steps/s."""
    runs = result["runs"]
    steps = max(r["eval"]["num_steps"] for r in runs.values())
    head = ["learner", "meta-steps", "training (s)", "env steps/s", "before adaptation"]
    head += [f"after {s} step{'s' if s > 1 else ''}" for s in range(1, steps + 1)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in [n for n in LABELS if n in runs] + [n for n in runs if n not in LABELS]:
        run = runs[name]
        ret, train = run["eval"]["return"], run["train"]
        speed = train.get("env_steps_per_s_steady")
        cells = [
            LABELS.get(name, name),
            str(train["steps"]),
            f"{train['seconds']:.0f}",
            f"{speed:,.0f}" if speed else "-",
        ]
        cells += [f"{m:.1f} +- {c:.1f}" for m, c in zip(ret["mean"], ret["ci95"], strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Return against adaptation steps, one line and 95% band per learner (MAML's Figure 5, left)."""
    from metajax.plots import plot_adaptation

    runs = result["runs"]
    names = [n for n in LABELS if n in runs] + [n for n in runs if n not in LABELS]
    plot_adaptation({LABELS.get(n, n): runs[n]["eval"] for n in names}, path, title="2D navigation, new tasks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="gather RUNS/*/metrics.json into one JSON object on stdout")
    c.add_argument("runs", type=Path)
    c.add_argument("--note", default="", help="how the runs were made (commands, machine load, wall time)")
    t = sub.add_parser("table", help="print the markdown table of a collected JSON file")
    t.add_argument("json", type=Path)
    f = sub.add_parser("plot", help="draw return against adaptation steps from a collected JSON file")
    f.add_argument("json", type=Path)
    f.add_argument("png", type=Path)
    args = parser.parse_args()
    if args.command == "collect":
        print(json.dumps(collect(args.runs, args.note), indent=2))
    elif args.command == "table":
        print(table(json.loads(args.json.read_text())))
    else:
        plot(json.loads(args.json.read_text()), args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
