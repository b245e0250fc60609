"""Episodes/s of ProtoNet training on Omniglot with the host pipeline (HostEpisodes) against on-device sampling.

Both feed the same trainer (``metajax.train``), learner (ProtoNet, Conv4-64), optimizer and
episode shape (5-way 1-shot 15 queries, Vinyals training classes); only where episodes are
drawn differs. The two are run in turns (device, host, device, host, ...) after one warm-up
run each (compilation), so a change in the machine's load falls on both alike; the JSON
gives every run, the medians and the median of the per-pair ratios, with the load average
before and after each run. Prints the JSON and, with ``--out``, writes it atomically.

    python scripts/host_pipeline_throughput.py --steps 30 --repeats 5 --out docs/results/host-pipeline-omniglot.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import optax

import metajax
from metajax import models
from metajax._io import write_json_atomic
from metajax.app.runs import machine
from metajax.datasets import load_omniglot
from metajax.tasks import FewShot, HostEpisodes

# One optimizer object: the trainer reuses a compiled program only for the same one.
OPTIMIZER = optax.adam(1e-3)


def _episodes_per_s(learner, task, args) -> float:
    """Episodes/s of one ``train`` run of ``args.steps`` meta-steps (the trainer's own timing, after set-up)."""
    _, history = metajax.train(learner, task, OPTIMIZER, key=jax.random.key(0), num_steps=args.steps,
                               meta_batch=args.meta_batch, log_every=args.steps, progress=False)  # fmt: skip
    return history[-1]["tasks_per_s"]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="meta-steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each, interleaved")
    parser.add_argument("--meta-batch", type=int, default=32, help="episodes per meta-step")
    parser.add_argument("--workers", type=int, default=2, help="the pipeline's reader threads")
    parser.add_argument("--data-root", type=Path, default=None, help="Omniglot folder (default: $METAJAX_DATA)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    shape = dict(ways=5, shots=1, queries=15)
    images = load_omniglot("vinyals-train", root=args.data_root, image_size=28).images  # numpy, on the host
    learner = metajax.ProtoNet(models.Conv4(filters=64, out=None), ways=5)
    device_task = FewShot(images, **shape)  # the images copied to the device once

    def host_feed() -> HostEpisodes:
        return HostEpisodes(images, **shape, tasks_per_step=args.meta_batch, seed=0, workers=args.workers)

    def run(mode: str) -> dict:
        load_before = list(os.getloadavg())
        if mode == "device":
            rate = _episodes_per_s(learner, device_task, args)
        else:
            with host_feed() as feed:
                rate = _episodes_per_s(learner, feed, args)
        return {"mode": mode, "episodes_per_s": rate, "load_before": load_before, "load_after": list(os.getloadavg())}

    for mode in ("device", "host"):  # compile both programs before timing
        run(mode)
    runs = []
    for _ in range(args.repeats):
        runs += [run("device"), run("host")]
    rates = {m: [r["episodes_per_s"] for r in runs if r["mode"] == m] for m in ("device", "host")}
    ratios = [h / d for d, h in zip(rates["device"], rates["host"], strict=True)]
    result = {
        "benchmark": "host-pipeline-vs-device-sampling",
        "workload": {
            "learner": "protonet",
            "backbone": "conv4-64",
            "dataset": "omniglot vinyals-train (4112 classes)",
            **shape,
            "meta_batch": args.meta_batch,
            "optimizer": "adam(1e-3)",
        },
        "settings": {
            "steps_per_run": args.steps,
            "repeats": args.repeats,
            "workers": args.workers,
            "order": "interleaved: device, host, device, host, ... after one untimed warm-up run of each",
        },
        "machine": {**machine(), "cpu_count": os.cpu_count(), "load_avg_at_end": list(os.getloadavg())},
        "caveat": "Measured on a CPU machine shared with other jobs: absolute episodes/s are contended; "
        "the ratio of interleaved runs is the figure to read.",
        "median_episodes_per_s": {m: statistics.median(v) for m, v in rates.items()},
        "ratio_host_over_device": {
            "median_of_pairs": statistics.median(ratios),
            "of_medians": statistics.median(rates["host"]) / statistics.median(rates["device"]),
            "pairs": ratios,
        },
        "runs": runs,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
