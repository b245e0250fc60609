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

``collect``, ``table`` and ``plot`` serve the other RL tasks' runs too (the half-cheetahs'
``--task cheetah-vel|cheetah-dir``); the plot is titled by the runs' task::

    python scripts/rl_nav2d.py collect runs/cheetah-vel > docs/results/cheetah-vel-cpu.json

``trajectories`` draws a trained run's paths to a few new goals before and after each
adaptation step (MAML's Figure 5, right), with the JSON behind the figure::

    python scripts/rl_nav2d.py trajectories runs/nav2d/promp docs/results/nav2d-trajectories.json \
        docs/nav2d-trajectories.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

LABELS = {
    "maml-rl": "MAML-RL (DiCE, second order)",
    "maml-rl-fo": "MAML-RL (first order)",
    "maml-trpo": "MAML-TRPO (trust-region meta-step)",
    "promp": "ProMP (LVC, clipped outer steps)",
    "pretrained": "pretrained + fine-tuning",
    "random": "random init + fine-tuning",
}


TITLES = {"nav2d": "2D navigation", "cheetah-vel": "half-cheetah velocity", "cheetah-dir": "half-cheetah direction"}


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
            # metajax train's totals give the environment steps per task (its own count of a meta-step's episodes).
            per_task = train["env_steps_per_s"] / train["tasks_per_s"]
            train["env_steps_per_s_steady"] = statistics.median(later) * per_task
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
    task = runs[names[0]]["config"]["task"]
    plot_adaptation({LABELS.get(n, n): runs[n]["eval"] for n in names}, path, title=f"{TITLES[task]}, new tasks")


def trajectories(run: Path, goals: int, steps: int, seed: int) -> dict:
    """Paths ``[goals][steps + 1][horizon][2]`` of the mean actions of ``run``'s policy, adapted 0..``steps`` times.

    The goals are new tasks drawn from ``seed``; each adaptation step samples the episodes
    of the learner's inner step (as evaluation does); the path follows the policy's mean
    action from the origin, so it shows where the adapted policy heads, without the noise.
    """
    import jax
    import numpy as np

    from metajax import rl
    from metajax.app.cli import restore_run

    record, _, prepared, state = restore_run(run)
    learner, env = prepared.learner, prepared.train_task.env
    mean_actions = MeanActions(learner.policy)
    k_goals, k_adapt = jax.random.split(jax.random.key(seed))
    tasks = env.sample_tasks(k_goals, goals)

    @jax.jit
    def paths(task, key):
        support = (task[None], task[None, :1])
        policies = [learner.adapt(state.params, support, key, num_steps=n) for n in range(steps + 1)]
        out = [rl.rollout(env, mean_actions, p, task, key, 1) for p in policies]
        return [(t.observations[0], t.returns[0]) for t in out]  # positions from the start, before each action

    result: dict = {"run": str(run), "algo": record["algo"], "checkpoint_step": int(state.step), "seed": seed}
    result.update(goals=np.asarray(tasks).tolist(), steps=list(range(steps + 1)), paths=[], returns=[])
    for task, key in zip(tasks, jax.random.split(k_adapt, goals), strict=True):
        drawn = paths(task, key)
        result["paths"].append([np.asarray(p).round(4).tolist() for p, _ in drawn])
        result["returns"].append([round(float(r), 3) for _, r in drawn])
    return result


class MeanActions:
    """The deterministic policy of a Gaussian one: its mean action (for drawing paths)."""

    def __init__(self, policy):
        self.policy = policy

    def sample(self, params, obs, key):
        """The mean action ``[A]`` for ``obs [O]``; ``key`` is unused."""
        del key
        return self.policy.mean(params, obs)


def plot_trajectories(result: dict, path: Path) -> None:
    """One panel per goal: the path before adaptation and after each step, the goal as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result["goals"])
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    colours = plt.get_cmap("viridis")
    for i, ax in enumerate(axes[0]):
        for j, step in enumerate(result["steps"]):
            xy = result["paths"][i][j]
            label = "before adaptation" if step == 0 else f"after {step} step{'s' if step > 1 else ''}"
            ax.plot([p[0] for p in xy], [p[1] for p in xy], color=colours(j / max(len(result["steps"]) - 1, 1)),
                    lw=1.5, label=label)  # fmt: skip
        ax.plot(*result["goals"][i], marker="*", color="crimson", markersize=12, linestyle="none", label="goal")
        ax.plot(0, 0, marker="o", color="black", markersize=4, linestyle="none")
        ax.set(xlim=(-0.6, 0.6), ylim=(-0.6, 0.6), aspect="equal", xticks=[-0.5, 0, 0.5], yticks=[-0.5, 0, 0.5])
    axes[0][0].legend(fontsize=7, loc="lower left")
    name = LABELS.get(result["algo"], result["algo"])
    fig.suptitle(f"2D navigation, new goals: {name}, meta-step {result['checkpoint_step']} (mean actions)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


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
    r = sub.add_parser("trajectories", help="draw a run's paths to new goals before and after adaptation")
    r.add_argument("run", type=Path, help="a metajax train --task nav2d run folder (its newest checkpoint)")
    r.add_argument("json", type=Path)
    r.add_argument("png", type=Path)
    r.add_argument("--goals", type=int, default=4, help="new goals, one panel each (4)")
    r.add_argument("--steps", type=int, default=3, help="adaptation steps drawn after the pre-adaptation path (3)")
    r.add_argument("--seed", type=int, default=0, help="draws the goals and the adaptation episodes (0)")
    args = parser.parse_args()
    if args.command == "trajectories":
        if args.goals < 1 or args.steps < 0:
            parser.error(f"--goals must be positive and --steps non-negative, got {args.goals} and {args.steps}.")
        result = trajectories(args.run, args.goals, args.steps, args.seed)
        lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in result.items()]  # one line per key
        args.json.write_text("{\n" + ",\n".join(lines) + "\n}\n")
        plot_trajectories(result, args.png)
        print(f"wrote {args.json} and {args.png}")
    elif args.command == "collect":
        print(json.dumps(collect(args.runs, args.note), indent=2))
    elif args.command == "table":
        print(table(json.loads(args.json.read_text())))
    else:
        plot(json.loads(args.json.read_text()), args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
