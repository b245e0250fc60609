"""Sharding the task axis: the same meta-step on 1 or N devices."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import metajax
from metajax import distributed, models, tasks

SRC = str(Path(metajax.__file__).resolve().parents[1])


def _setup():
    learner = metajax.MAML(models.MLP(hidden=(16, 16), out=1), inner_lr=0.05, inner_steps=2)
    task = tasks.Sinusoid(shots=5)
    return learner, task, optax.adam(1e-2)


def test_one_device_mesh_equals_the_plain_step():
    learner, task, opt = _setup()
    state = metajax.init_state(learner, task, opt, jax.random.key(0))
    plain = metajax.make_train_step(learner, task, opt, meta_batch=4, steps_per_call=2)
    sharded = metajax.make_train_step(learner, task, opt, 4, 2, mesh=distributed.task_mesh(jax.devices()[:1]))
    copy = jax.tree.map(lambda a: a.copy(), state)
    s1, m1 = plain(state)
    s2, m2 = sharded(copy)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s1, s2)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)


def test_one_device_mesh_carries_the_running_statistics_as_the_plain_step():
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 8, 8, 1), dtype=np.uint8)
    task = tasks.FewShot(jax.numpy.asarray(images), ways=2, shots=1, queries=1)
    learner = metajax.MAML(models.Conv4(filters=2, out=2, bn="running"), inner_lr=0.1)
    opt = optax.sgd(0.1)  # not Adam: the conv biases before batch norm have zero gradient, up to rounding
    state = metajax.init_state(learner, task, opt, jax.random.key(0))
    mesh = distributed.task_mesh(jax.devices()[:1])
    copy = jax.tree.map(lambda a: a.copy(), state)
    s1, _ = metajax.make_train_step(learner, task, opt, 2, task_batching="vmap")(state)
    s2, _ = metajax.make_train_step(learner, task, opt, 2, task_batching="vmap", mesh=mesh)(copy)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s1, s2)
    assert np.abs(s2.model_state["batch_stats"]["BatchStatNorm_0"]["mean"]).max() > 0


def test_meta_batch_must_divide_over_devices():
    learner, task, opt = _setup()
    mesh = distributed.task_mesh(jax.devices()[:1] * 1)
    with pytest.raises(ValueError, match="meta_batch must be a positive integer"):
        metajax.make_train_step(learner, task, opt, 0, mesh=mesh)
    with pytest.raises(ValueError, match="multiple of the 3 devices"):
        three = jax.sharding.Mesh(np.array(jax.devices()[:1] * 3), ("tasks",))
        metajax.make_train_step(learner, task, opt, 4, mesh=three)


_EIGHT_DEVICES = textwrap.dedent(
    """
    import jax, numpy as np, optax
    import metajax
    from metajax import distributed, models, tasks
    assert jax.device_count() == 8, jax.devices()
    opt = optax.adam(1e-2)
    learners = {
        "maml-vmap": (metajax.MAML(models.MLP(hidden=(16, 16), out=1), inner_lr=0.05, inner_steps=2), "vmap"),
        "maml-map": (metajax.MAML(models.MLP(hidden=(16, 16), out=1), inner_lr=0.05, inner_steps=2), "map"),
        "fomaml-vmap": (metajax.MAML(models.MLP(hidden=(16,), out=1), meta_gradient=metajax.FirstOrder()), "vmap"),
    }
    task = tasks.Sinusoid(shots=5)
    for name, (learner, batching) in learners.items():
        state = metajax.init_state(learner, task, opt, jax.random.key(0))
        copy = jax.tree.map(lambda a: a.copy(), state)
        plain = metajax.make_train_step(learner, task, opt, 16, steps_per_call=3, task_batching=batching)
        mesh = distributed.task_mesh()
        sharded = metajax.make_train_step(learner, task, opt, 16, steps_per_call=3, task_batching=batching, mesh=mesh)
        s1, m1 = plain(state)
        s2, m2 = sharded(copy)
        assert len(s2.params["Dense_0"]["kernel"].sharding.device_set) == 8
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), s1, s2)
        np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
        print("ok", name, float(m2["loss"][-1]))
    # train(mesh=...) gives the single-device run's parameters, with its checkpoints and log.
    import tempfile
    from metajax.checkpoint import Checkpointer
    learner = learners["maml-vmap"][0]
    run = dict(key=jax.random.key(3), num_steps=6, meta_batch=16, steps_per_call=2, log_every=2, progress=False)
    one, log_one = metajax.train(learner, task, opt, **run)
    with tempfile.TemporaryDirectory() as folder:
        ckpt = Checkpointer(folder, every=2)
        many, log_many = metajax.train(learner, task, opt, mesh=distributed.task_mesh(), checkpointer=ckpt, **run)
        ckpt.close()
        assert Checkpointer(folder, every=1).steps() == [2, 4, 6]
    assert len(many.params["Dense_0"]["kernel"].sharding.device_set) == 8
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), one.params, many.params)
    assert [e["step"] for e in log_one] == [e["step"] for e in log_many] == [2, 4, 6]
    print("ok train")
    # An episode feed (the host pipeline) on the mesh: the run of the same feed on one device.
    from metajax.app import cli
    from metajax.datasets import ImageClasses
    images = np.random.default_rng(0).integers(0, 256, (12, 6, 4, 4, 1), dtype=np.uint8)
    protonet = metajax.ProtoNet(models.MLP(hidden=(8,), out=None), ways=3)
    fed = dict(key=jax.random.key(1), num_steps=4, meta_batch=16, log_every=2, progress=False)

    def feed(device=None):
        return tasks.HostEpisodes(images, ways=3, shots=1, queries=2, tasks_per_step=16, seed=5, workers=1,
                                  device=device)

    with feed() as one_feed, feed(distributed.task_sharding(distributed.task_mesh())) as many_feed:
        one, log_one = metajax.train(protonet, one_feed, opt, **fed)
        many, log_many = metajax.train(protonet, many_feed, opt, mesh=distributed.task_mesh(), **fed)
    assert len(many.params["Dense_0"]["kernel"].sharding.device_set) == 8
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), one.params, many.params)
    np.testing.assert_allclose([e["loss"] for e in log_one], [e["loss"] for e in log_many], rtol=1e-5)
    # --host-pipeline --devices 8 builds that feed: each batch lands split by task over the 8 devices.
    args = cli.build_parser().parse_args(["train", "--task", "omniglot", "--host-pipeline", "--devices", "8",
                                          "--ways", "3", "--shots", "1", "--meta-batch", "16", "--out", "x"])
    with cli._host_pipeline(args, ImageClasses(images, tuple(map(str, range(12)))), 2) as cli_feed:
        batch = next(cli_feed)
        assert len(batch.sharding.device_set) == 8 and batch.addressable_shards[0].data.shape[0] == 2
    print("ok feed")
    # Running batch-norm statistics (bn="running"): averaged over all 16 tasks on 8 devices as on one.
    few = tasks.FewShot(jax.numpy.asarray(images), ways=2, shots=1, queries=1)
    maml = metajax.MAML(models.Conv4(filters=2, out=2, bn="running"), inner_lr=0.1)
    sgd = optax.sgd(0.1)
    state = metajax.init_state(maml, few, sgd, jax.random.key(2))
    copy = jax.tree.map(lambda a: a.copy(), state)
    s1, _ = metajax.make_train_step(maml, few, sgd, 16, task_batching="vmap")(state)
    s2, _ = metajax.make_train_step(maml, few, sgd, 16, task_batching="vmap", mesh=distributed.task_mesh())(copy)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s1, s2)
    assert np.abs(s2.model_state["batch_stats"]["BatchStatNorm_0"]["mean"]).max() > 0
    print("ok running-bn")
    """
)


def test_sharded_step_on_eight_devices_equals_one_device():
    env = dict(
        os.environ,
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ok ") == 6, proc.stdout
