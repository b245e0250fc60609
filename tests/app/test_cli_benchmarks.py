"""metajax train --task names every tasks.benchmark, and builds a ragged benchmark from --data-root."""

from __future__ import annotations

import pickle

import numpy as np

from metajax.app import cli
from metajax.tasks import BENCHMARK_SPLITS, RaggedFewShot


def test_cli_image_tasks_are_the_benchmarks():
    assert set(cli.SUPERVISED_TASKS) - {"sinusoid"} == set(BENCHMARK_SPLITS) == set(cli.DEFAULT_FILTERS)


def test_train_builds_tiered_imagenet_from_the_data_root(tmp_path):
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2])  # classes of 3, 3, 3 and 2 images
    for split in ("train", "val", "test"):
        np.savez(tmp_path / f"{split}_images.npz", images=np.zeros((len(labels), 84, 84, 3), np.uint8))
        with open(tmp_path / f"{split}_labels.pkl", "wb") as f:
            pickle.dump({"labels": labels}, f)
    argv = ["train", "--task", "tiered-imagenet", "--algo", "protonet", "--ways", "2", "--train-ways", "3"]
    args = cli.build_parser().parse_args(
        [*argv, "--shots", "1", "--query", "1", "--data-root", str(tmp_path), "--out", "x"]
    )
    cli._fill_defaults(args)
    train, test = cli.build_tasks(args)
    assert isinstance(train, RaggedFewShot) and isinstance(test, RaggedFewShot)
    assert (train.ways, test.ways, train.num_classes, train.max_count) == (3, 2, 4, 3)
    assert cli.build_learner(args, train.ways) is not None
