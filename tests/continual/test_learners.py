"""Every online learner lowers its loss on a tiny stream, compiles once across tasks, and runs a lifelong stream."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import continual as C
from metajax import losses, models


def _tiny_sequence(num_tasks=3, per_task=12, dim=6, classes=4, seed=0):
    """Linearly separable Gaussian blobs; every task has its own input shift (domain-incremental)."""
    key = jax.random.key(seed)
    centres = jax.random.normal(key, (classes, dim))
    y = jnp.arange(2 * per_task) % classes
    shifts = 0.5 * jax.random.normal(jax.random.key(seed + 1), (num_tasks, 1, dim))
    noise = 0.1 * jax.random.normal(jax.random.key(seed + 2), (num_tasks, 2 * per_task, dim))
    x = centres[y][None] + shifts + noise
    ys = jnp.broadcast_to(y, (num_tasks, 2 * per_task)).astype(jnp.int32)
    return C.TaskSequence(x[:, :per_task], ys[:, :per_task], x[:, per_task:], ys[:, per_task:])


def _learners():
    net = models.MLP(hidden=(16,), out=4)
    return {
        "finetune": C.Finetune(net, lr=0.1),
        "replay": C.ExperienceReplay(net, lr=0.1, capacity=8, replay_batch=4),
        "ewc": C.EWC(net, lr=0.1, strength=1.0),
        "lamaml": C.LaMAML(net, alpha_init=0.1, alpha_lr=0.01, capacity=8, replay_batch=4),
        "mer": C.MER(net, lr=0.05, batches=2, batch_size=3, capacity=8),
        "oml": C.OML(models.MLP(hidden=(16,), out=None), nn.Dense(4), inner_lr=0.1, reset=False),
    }


@pytest.mark.parametrize("name", list(_learners()))
def test_learner_lowers_its_loss(name):
    learner = _learners()[name]
    seq = _tiny_sequence(num_tasks=1)
    x, y = seq.train_x[0], seq.train_y[0]
    state = learner.init_state(jax.random.key(0), x[:4], y[:4])
    loss = lambda s: float(losses.resolve(learner.objective, y)(learner.predict(s, x), y)[0])
    before = loss(state)

    @jax.jit
    def epoch(state, key):
        def step(s, item):
            xb, yb, k = item
            return learner.update(s, metajax.StreamBatch(xb, yb, jnp.int32(0), jnp.bool_(False)), k)[0], None

        keys = jax.random.split(key, 3)
        return jax.lax.scan(step, state, (x.reshape(3, 4, -1), y.reshape(3, 4), keys))[0]

    for k in jax.random.split(jax.random.key(1), 5):
        state = epoch(state, k)
    assert loss(state) < 0.8 * before


@dataclasses.dataclass(frozen=True)
class CountingLearner:
    """Delegates to ``inner`` and counts how often ``update`` is traced."""

    inner: object
    traces: list

    @property
    def objective(self):
        return self.inner.objective

    def init_state(self, key, x, y):
        return self.inner.init_state(key, x, y)

    def predict(self, state, x):
        return self.inner.predict(state, x)

    def update(self, state, batch, key):
        self.traces.append(1)
        return self.inner.update(state, batch, key)


def test_no_recompilation_across_tasks():
    counter = CountingLearner(_learners()["replay"], [])
    # 12 steps in chunks of 5: three calls of one compiled chunk, the last one padded.
    out = C.run_sequence(counter, _tiny_sequence(num_tasks=4), key=jax.random.key(0), batch_size=4, chunk=5)
    assert len(counter.traces) == 1
    R = out["R"]
    assert R.shape == (5, 4) and out["online"].shape == (12,)
    assert set(out["summary"]) == {"acc", "bwt", "fwt", "learning_accuracy", "forgetting"}


def test_chunked_pass_equals_the_updates_by_hand():
    learner, seq = _learners()["replay"], _tiny_sequence()
    out = C.run_sequence(learner, seq, key=jax.random.key(0), batch_size=4, chunk=4)  # chunks cross tasks
    k_init, k_run, _ = jax.random.split(jax.random.key(0), 3)
    state = learner.init_state(k_init, seq.train_x[0, :4], seq.train_y[0, :4])
    metric = lambda s, x, y: float(losses.resolve(None, y)(learner.predict(s, x), y)[1]["accuracy"])
    test_all = lambda s: [metric(s, seq.test_x[t], seq.test_y[t]) for t in range(3)]
    rows, online = [test_all(state)], []
    for t, k in enumerate(jax.random.split(k_run, 3)):
        for i, k_step in enumerate(jax.random.split(k, 3)):
            x, y = seq.train_x[t, 4 * i : 4 * i + 4], seq.train_y[t, 4 * i : 4 * i + 4]
            online.append(metric(state, x, y))
            state = learner.update(state, metajax.StreamBatch(x, y, jnp.int32(t), jnp.bool_(i == 0)), k_step)[0]
        rows.append(test_all(state))
    np.testing.assert_allclose(out["R"], rows, atol=1e-6)
    np.testing.assert_allclose(out["online"], online, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out["state"], state)


@pytest.mark.parametrize("lifelong", [False, True])
def test_pass_stopped_after_a_chunk_resumes_to_the_same_results(tmp_path, lifelong):
    from metajax.checkpoint import Checkpointer

    seq = _tiny_sequence(num_tasks=4)
    schedule = C.LifelongStream(p_stay=0.6, mixture=(0.4, 0.4, 0.2)).schedule(
        jax.random.key(1), 14, num_tasks=3, num_ood=1
    )

    def run(**kwargs):
        common = dict(key=jax.random.key(0), batch_size=4, chunk=4, **kwargs)
        if lifelong:
            return C.run_lifelong(_learners()["replay"], seq, schedule, num_tasks=3, **common)
        return C.run_sequence(_learners()["replay"], seq, **common)

    whole = run()

    class StopsAtStep8(Checkpointer):
        def maybe_save(self, state, *args):
            super().maybe_save(state, *args)
            if int(state.step) == 8:
                raise RuntimeError("stopped")

    stopping = StopsAtStep8(tmp_path, every=4)
    with pytest.raises(RuntimeError, match="stopped"):
        run(checkpointer=stopping)
    stopping.close()
    assert stopping.steps() == [4, 8]
    saved = Checkpointer(tmp_path, every=4)
    resumed = run(checkpointer=saved, resume=lambda like: saved.resume(like)[0])
    saved.close()
    assert resumed["resumed_from"] == 8 and whole["resumed_from"] == 0
    for name in ("R", "online"):
        np.testing.assert_array_equal(resumed[name], whole[name])
    jax.tree.map(np.testing.assert_array_equal, resumed["state"], whole["state"])
    assert resumed["summary"] == whole["summary"]


def test_joint_training_fills_first_and_last_rows():
    # Joint (i.i.d.) training, the upper bound: fine-tuning on the stream shuffled across tasks.
    joint = _learners()["finetune"]
    out = C.run_sequence(joint, _tiny_sequence(), key=jax.random.key(0), batch_size=4, iid=True)
    assert np.isfinite(out["R"][[0, -1]]).all() and np.isnan(out["R"][1:-1]).all()
    assert set(out["summary"]) == {"acc"} and out["online"].shape == (9,)
    sequential = C.run_sequence(joint, _tiny_sequence(), key=jax.random.key(0), batch_size=4)
    assert np.isfinite(sequential["R"]).all() and "bwt" in sequential["summary"]
    seq = _tiny_sequence(num_tasks=4)
    schedule = C.LifelongStream(p_stay=0.6, mixture=(0.4, 0.4, 0.2)).schedule(
        jax.random.key(1), 40, num_tasks=3, num_ood=1
    )
    out = C.run_lifelong(joint, seq, schedule, num_tasks=3, key=jax.random.key(0), batch_size=4, iid=True)
    n = out["introduced"]
    assert out["R"].shape == (n + 1, n) and np.isfinite(out["R"][[0, -1]]).all() and np.isnan(out["R"][1:-1]).all()
    assert set(out["summary"]) == {"acc"} and out["online"].shape == (40,)


def test_lifelong_run_fills_R_by_introduction():
    seq = _tiny_sequence(num_tasks=4)
    schedule = C.LifelongStream(p_stay=0.6, mixture=(0.4, 0.4, 0.2)).schedule(
        jax.random.key(1), 40, num_tasks=3, num_ood=1
    )
    out = C.run_lifelong(_learners()["ewc"], seq, schedule, num_tasks=3, key=jax.random.key(0), batch_size=4)
    n = out["introduced"]
    assert out["R"].shape == (n + 1, n) and np.isfinite(out["R"]).all()
    assert out["online"].shape == (40,) and out["online_cumulative"][-1] == pytest.approx(out["online"].mean())
    assert set(out["online_by_source"]) == {"seen", "new", "ood"}


def test_oml_meta_training_with_the_core_trainer():
    images = jax.random.randint(jax.random.key(0), (6, 8, 8, 8, 1), 0, 255).astype(jnp.uint8)
    oml = C.OML(C.ConvRepresentation(filters=4, layers=2, strided=2), nn.Dense(6), inner_lr=0.1)
    task = C.Trajectories(images, None, tasks=1, shots=3, remember=4)
    state, history = metajax.train(
        oml,
        task,
        optax.adam(1e-2),
        key=jax.random.key(0),
        num_steps=20,
        meta_batch=1,
        steps_per_call=10,
        log_every=10,
        progress=False,
    )
    assert history[-1]["loss"] < history[0]["loss"]
    head = C.reset_outputs(state.params["head"], jnp.array([1, 3]))
    assert not head["kernel"][:, [1, 3]].any() and head["kernel"][:, 0].any()
    pre = dataclasses.replace(oml, meta=False)
    loss, metrics = pre.loss(state.params, jax.tree.map(lambda a: a[0], task.sample(jax.random.key(1), 1)), None)
    assert np.isfinite(loss) and "accuracy" in metrics


def test_oml_online_learning_with_an_optax_optimizer_is_one_update_per_example():
    oml = C.OML(models.MLP(hidden=(8,), out=None), nn.Dense(4))
    x = jax.random.normal(jax.random.key(0), (5, 3))
    y = jnp.array([0, 1, 2, 3, 0])
    params = oml.init_params(jax.random.key(1), x)
    fresh = oml.reinit_head(jax.random.key(2), params, x)
    assert fresh["representation"] is params["representation"]
    assert jax.tree.map(jnp.shape, fresh["head"]) == jax.tree.map(jnp.shape, params["head"])
    assert not np.allclose(fresh["head"]["kernel"], params["head"]["kernel"])

    adam = optax.adam(1e-2)
    learned = oml.learn_online(fresh, x, y, optimizer=adam)
    head, state = fresh["head"], adam.init(fresh["head"])
    for i in range(5):  # the same updates, one example at a time, by hand
        loss = lambda h, i=i: losses.cross_entropy(oml.predict({**fresh, "head": h}, x[i : i + 1]), y[i : i + 1])[0]
        updates, state = adam.update(jax.grad(loss)(head), state, head)
        head = optax.apply_updates(head, updates)
    np.testing.assert_allclose(learned["head"]["kernel"], head["kernel"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="learn_online takes lr or optimizer, not both"):
        oml.learn_online(fresh, x, y, 0.1, optimizer=adam)


def test_bad_learner_config_is_named():
    with pytest.raises(ValueError, match="lr must be a positive number, got -1"):
        C.Finetune(models.MLP(), lr=-1)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\], got 2"):
        C.EWC(models.MLP(), decay=2)
    with pytest.raises(ValueError, match="batch_size must divide the 12 training examples"):
        C.run_sequence(_learners()["finetune"], _tiny_sequence(), key=jax.random.key(0), batch_size=5)
    with pytest.raises(TypeError, match="iid must be True or False, got 'yes'"):
        C.run_sequence(_learners()["finetune"], _tiny_sequence(), key=jax.random.key(0), batch_size=4, iid="yes")
