"""``metajax train --host-pipeline``: the flags' refusals, the feed it builds, the position it resumes from.

A full Omniglot run with the switch takes minutes on two cores, so the pieces ``train_command``
calls are tested here on small arrays; the run itself (straight vs resumed logs equal) is the
README's example.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import metajax
from metajax import models, tasks
from metajax.app import cli
from metajax.checkpoint import Checkpointer
from metajax.datasets import ImageClasses, RaggedImageClasses
from metajax.tasks import FewShot, HostEpisodes

OUT = ["--out", "/nonexistent-metajax-run"]  # refused before anything is written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--task", "omniglot", "--workers", "3"],
            "--workers 3 sets the threads of --host-pipeline; pass --host-pipeline",
        ),
        (["--host-pipeline"], "--host-pipeline draws image episodes (the image tasks), not --task sinusoid."),
    ],
)
def test_flags_that_do_not_apply_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *argv, *OUT])
    assert info.value.code == 2
    assert f"metajax train: {message}" in capsys.readouterr().err


def _args(*argv: str):
    return cli.build_parser().parse_args(["train", "--task", "omniglot", "--host-pipeline", *argv, *OUT])


def test_the_feed_draws_the_training_split_s_episodes():
    images = np.arange(6 * 4 * 2 * 2, dtype=np.uint8).reshape(6, 4, 2, 2, 1)
    data = ImageClasses(images, tuple("abcdef"))
    args = _args("--ways", "3", "--shots", "1", "--meta-batch", "5", "--seed", "7", "--workers", "1")
    with cli._host_pipeline(args, data, 2) as feed:
        assert isinstance(feed, HostEpisodes)
        assert (feed.tasks_per_step, feed.seed, feed.workers, feed.num_classes) == (5, 7, 1, 6)
        assert (feed.ways, feed.shots, feed.queries, feed.image_shape) == (3, 1, 2, (2, 2, 1))
        first = feed.draw(0)  # [ways, shots + queries, 2, 2, 1], images of the split's array
        np.testing.assert_array_equal(next(feed)[0], first)
        assert all(
            any((image == row).all() for row in images.reshape(-1, 2, 2, 1)) for image in first.reshape(-1, 2, 2, 1)
        )
    with cli._host_pipeline(
        _args("--train-ways", "4", "--shots", "1", "--meta-batch", "2", "--workers", "0"), data, 1
    ) as feed:
        assert (feed.ways, feed.workers) == (4, 0)  # --train-ways draws the training episodes; 0: no threads


def test_a_ragged_split_gives_a_feed_over_its_classes():
    data = RaggedImageClasses(np.arange(12 * 2 * 2, dtype=np.uint8).reshape(12, 2, 2, 1), np.array([3, 5, 4]),
                              ("a", "b", "c"))  # fmt: skip
    with cli._host_pipeline(_args("--ways", "2", "--shots", "1", "--meta-batch", "2"), data, 2) as feed:
        assert feed.num_classes == 3 and next(feed).shape == (2, 2, 3, 2, 2, 1)


def test_the_training_images_never_reach_the_device(monkeypatch):
    """``build_tasks`` loads the training split on the host only; the test split becomes an on-device task."""
    splits = {
        "train": ImageClasses(np.full((7, 5, 3, 3, 1), 1, np.uint8), tuple("abcdefg")),
        "test": ImageClasses(np.full((4, 6, 3, 3, 1), 2, np.uint8), tuple("hijk")),
    }
    monkeypatch.setattr(tasks, "benchmark_images", lambda name, part, root=None: splits[part])
    before = {id(a) for a in jax.live_arrays()}
    train, test = cli.build_tasks(
        _args("--ways", "2", "--shots", "1", "--query", "3", "--test-query", "4", "--meta-batch", "2")
    )
    with train:
        new = [a for a in jax.live_arrays() if id(a) not in before]
        assert not any(a.shape == (7, 5, 3, 3, 1) for a in new)  # the train split is not on the device
        assert isinstance(test, FewShot) and test.images.shape == (4, 6, 3, 3, 1) and test.queries == 4
        assert isinstance(train, HostEpisodes) and train.num_classes == 7 and train.queries == 3
        assert (np.asarray(next(train)) == 1).all()


def test_resume_restores_the_position_saved_with_the_checkpoint(tmp_path):
    images = np.arange(6 * 4 * 2 * 2, dtype=np.uint8).reshape(6, 4, 2, 2, 1)
    learner = metajax.ProtoNet(models.MLP(hidden=(4,), out=None), ways=2)

    def feed():
        return HostEpisodes(images, ways=2, shots=1, queries=1, tasks_per_step=2, seed=0, workers=1)

    common = dict(key=jax.random.key(0), meta_batch=2, progress=False)
    with feed() as trained:
        checkpointer = Checkpointer(tmp_path / "run" / "checkpoints", every=2)
        metajax.train(learner, trained, optax.sgd(0.1), num_steps=2, checkpointer=checkpointer, **common)
        checkpointer.close()
        expected = np.asarray(next(trained))
    with feed() as resumed:
        cli._restore_position(resumed, tmp_path / "run", 2)
        assert resumed.position == 2
        np.testing.assert_array_equal(next(resumed), expected)
    checkpointer = Checkpointer(tmp_path / "plain" / "checkpoints", every=1)
    metajax.train(learner, FewShot(images, ways=2, shots=1, queries=1), optax.sgd(0.1), num_steps=1,
                  checkpointer=checkpointer, **common)  # fmt: skip
    checkpointer.close()
    argv = ["train", "--task", "omniglot", "--host-pipeline", "--resume", str(tmp_path / "plain"), "--out", "x"]
    args = cli.build_parser().parse_args(argv)  # what train_command restores from, for these flags
    with feed() as other, pytest.raises(SystemExit, match="holds no episode-stream position, so the run cannot"):
        cli._restore_position(other, args.resume, 1)
