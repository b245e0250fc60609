"""How long an in-context learner sits at chance on Omniglot, with and without each of its remedies.

Meta-trained from scratch, an in-context classifier predicts at chance until its attention
matches each query with its class's support tokens and its tokens carry the labels to the
queries (a plateau). Two options of :class:`metajax.TransformerICL` shorten it, both on by
default: ``tied_keys`` starts each key projection equal to its query projection, so
attention starts as a similarity of tokens; ``feature_norm`` brings the features to a
one-hot label's norm before they share a token with the label. ``--compare`` names the one
to switch (the other stays on). ``--learner snail`` runs :class:`metajax.SNAIL` (the paper's
stack) instead, where only ``feature_norm`` applies. The script trains both settings on the same episodes
(Omniglot 5-way 1-shot, Vinyals split, 5 queries per class, meta-batch 32, Adam 1e-3) and
prints one JSON line per run: the training-accuracy curve, the first logged step above
``--escape`` (default 0.3; chance is 0.2) and the test accuracy on ``--eval-tasks`` new
episodes.

The default embedding is a flattened MLP (784-256-64), which makes a run take about a
minute on two CPU cores; ``--embedding conv4`` uses the README's Conv4-64 (several times slower).

    python scripts/icl_plateau.py --steps 1000 --seeds 0,1 > docs/results/icl-plateau-omniglot-cpu.jsonl
    python scripts/icl_plateau.py --embedding conv4 --compare feature_norm --steps 300 --seeds 0,1
    python scripts/icl_plateau.py --learner snail --embedding conv4 --compare feature_norm --steps 300 --seeds 0,1

Data: ``--data-root`` or ``$METAJAX_DATA`` (see ``metajax.datasets``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import optax

import metajax
from metajax import models, tasks


class FlatMLP(nn.Module):
    """``[examples, H, W, C]`` images -> ``[examples, 64]`` features: an MLP on the flattened pixels."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return models.MLP(hidden=(256,), out=64)(x.reshape(x.shape[0], -1))


def run(switched: bool, seed: int, args: argparse.Namespace, bench: tasks.Benchmark) -> dict:
    """One meta-training run, ``args.compare`` set to ``switched``, and its test accuracy; the JSON line."""
    embed = models.Conv4(filters=64, pool="max", out=None) if args.embedding == "conv4" else FlatMLP()
    if args.learner == "snail":
        learner = metajax.SNAIL(embed, outputs=5, feature_norm=switched)
    else:
        learner = metajax.TransformerICL(embed, outputs=5, **{args.compare: switched})
    key_train, key_eval = jax.random.split(jax.random.key(seed))
    start = time.perf_counter()
    state, history = metajax.train(learner, bench.train, optax.adam(1e-3), key=key_train, num_steps=args.steps,
                                   meta_batch=32, log_every=args.log_every, progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    test = metajax.evaluate(learner, state.params, bench.test, key=key_eval, num_tasks=args.eval_tasks)
    curve = [{"step": h["step"], "accuracy": h["accuracy"]} for h in history]
    escaped = next((h["step"] for h in curve if h["accuracy"] > args.escape), None)
    return {
        "kind": "result",
        "learner": args.learner,
        "compare": args.compare,
        "tied_keys": getattr(learner, "tied_keys", None),
        "feature_norm": learner.feature_norm,
        "seed": seed,
        "embedding": args.embedding,
        "steps": args.steps,
        "train_seconds": seconds,
        "first_step_above_escape": escaped,
        "escape": args.escape,
        "train_curve": curve,
        "test_accuracy": test["accuracy"]["mean"][-1],
        "test_ci95": test["accuracy"]["ci95"][-1],
        "test_episodes": args.eval_tasks,
        "load_avg_at_end": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    """Train each start for each seed; print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="meta-steps per run")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    parser.add_argument("--learner", choices=("transformer", "snail"), default="transformer")
    parser.add_argument("--embedding", choices=("mlp", "conv4"), default="mlp")
    parser.add_argument("--compare", choices=("tied_keys", "feature_norm"), default="tied_keys",
                        help="the option trained on and off (the other stays on)")  # fmt: skip
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--escape", type=float, default=0.3, help="training accuracy that ends the plateau")
    parser.add_argument("--eval-tasks", type=int, default=1000, help="test episodes (15 queries per class)")
    parser.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: $METAJAX_DATA)")
    args = parser.parse_args(argv)
    if args.learner == "snail" and args.compare != "feature_norm":
        parser.error(f"--compare {args.compare}: SNAIL has no such option; --learner snail compares feature_norm")
    for name in ("steps", "log_every", "eval_tasks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    bench = tasks.benchmark("omniglot", ways=5, shots=1, queries=5, root=args.data_root)
    bench = bench._replace(test=dataclasses.replace(bench.test, queries=15))
    print(json.dumps({"kind": "machine", "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                      "jax": jax.__version__, "load_avg": list(os.getloadavg())}), flush=True)  # fmt: skip
    for seed in seeds:
        for switched in (True, False):
            print(json.dumps(run(switched, seed, args, bench)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
