"""HostEpisodes: Grain-drawn episodes checked through images whose pixels encode their row; the trainer fed by it."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import metajax
from metajax import models
from metajax.checkpoint import Checkpointer
from metajax.tasks import EpisodeFeed, HostEpisodes, ImageFiles
from metajax.training import init_state

# Classes out of row order, with rows 3, 31, 32, 38 and 39 in no class (as in test_ragged.py).
OFFSETS, COUNTS = (11, 0, 33, 4), (20, 3, 5, 7)
TOTAL, SIDE = 40, 3


def _id_images() -> np.ndarray:
    """``[40, 3, 3, 2]``: channel 0 = row index, channel 1 = 200 + row // 8 (so no two channels agree)."""
    images = np.zeros((TOTAL, SIDE, SIDE, 2), np.uint8)
    images[..., 0] = np.arange(TOTAL)[:, None, None]
    images[..., 1] = 200 + np.arange(TOTAL)[:, None, None] // 8
    return images


def _class_of_row() -> dict[int, int]:
    return {row: c for c, (o, n) in enumerate(zip(OFFSETS, COUNTS, strict=True)) for row in range(o, o + n)}


@pytest.fixture
def feeds():
    """``make(**kwargs)``: a HostEpisodes over the id images; every feed made is closed after the test."""
    made = []

    def make(images=None, offsets=OFFSETS, counts=COUNTS, **kwargs):
        settings = dict(ways=3, shots=1, queries=2, tasks_per_step=4, seed=0, workers=2) | kwargs
        images = _id_images() if images is None else images
        feed = HostEpisodes(images, None if offsets is None else np.array(offsets),
                            None if counts is None else np.array(counts), **settings)  # fmt: skip
        made.append(feed)
        return feed

    yield make
    for feed in made:
        feed.close()


def _batches(feed, n: int) -> np.ndarray:
    return np.stack([np.asarray(next(feed)) for _ in range(n)])


@pytest.mark.parametrize(("ways", "shots", "queries"), [(3, 1, 2), (4, 1, 2), (2, 2, 1)])
def test_episodes_are_valid(feeds, ways, shots, queries):
    feed = feeds(ways=ways, shots=shots, queries=queries, tasks_per_step=8)
    assert isinstance(feed, EpisodeFeed) and feed.kind == "classification"
    batch = next(feed)
    assert batch.shape == (8, ways, shots + queries, SIDE, SIDE, 2) and batch.dtype == jnp.uint8
    episode = jax.jit(feed.assemble)(batch, jax.random.key(0))
    assert episode.support_x.shape == (8, ways * shots, SIDE, SIDE, 2) and episode.support_x.dtype == jnp.float32
    assert episode.query_x.shape == (8, ways * queries, SIDE, SIDE, 2) and episode.query_y.dtype == jnp.int32
    class_of, first_class = _class_of_row(), []
    for x in _batches(feed, 30).reshape(-1, ways, shots + queries, SIDE, SIDE, 2):  # 240 episodes
        rows = x[..., 0, 0, 0]  # [ways, shots + queries]
        assert (x[..., 1] == 200 + rows[..., None, None] // 8).all()  # the image of its row, channels intact
        classes = [{class_of[int(r)] for r in per_label} for per_label in rows]
        assert all(len(c) == 1 for c in classes)  # each label's images are of one class
        assert len({c.pop() for c in classes}) == ways  # distinct classes
        assert len(set(rows.ravel())) == rows.size  # support and query disjoint
        first_class.append(class_of[int(rows[0, 0])])
    assert set(first_class) == {0, 1, 2, 3}  # label 0 goes to any class: labels are permuted
    np.testing.assert_array_equal(episode.support_y[0], np.repeat(np.arange(ways), shots))
    np.testing.assert_array_equal(episode.query_y[0], np.repeat(np.arange(ways), queries))


def test_deterministic_for_a_seed_whatever_the_workers(feeds):
    one, many, other = feeds(seed=5, workers=0), feeds(seed=5, workers=3), feeds(seed=6)
    a, b = _batches(one, 5), _batches(many, 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _batches(other, 5))
    # Batch k is episodes k*T ... k*T + T - 1 of the stream, each drawn from (seed, index) alone.
    np.testing.assert_array_equal(a[2], np.stack([one.draw(2 * 4 + j) for j in range(4)]))
    np.testing.assert_array_equal(feeds(seed=5).example(), a[0])
    assert one.position == 5


def test_class_major_arrays_memory_maps_and_files_give_the_same_stream(feeds, tmp_path):
    images = _id_images()
    equal = images[:36].reshape(4, 9, SIDE, SIDE, 2)  # 4 classes of 9 rows
    flat = feeds(images[:36], offsets=(0, 9, 18, 27), counts=(9, 9, 9, 9))
    np.save(tmp_path / "images.npy", equal)
    mapped = feeds(np.load(tmp_path / "images.npy", mmap_mode="r"), offsets=None, counts=None)
    expected = _batches(flat, 3)
    np.testing.assert_array_equal(_batches(feeds(equal, offsets=None, counts=None), 3), expected)
    np.testing.assert_array_equal(_batches(mapped, 3), expected)
    paths = []
    for row, image in enumerate(images[:, :, :, 0]):
        paths.append(tmp_path / f"{row}.png")
        Image.fromarray(image).save(paths[-1])
    files = ImageFiles(paths, size=SIDE)
    assert files.shape == (TOTAL, SIDE, SIDE, 1) and len(files) == TOTAL
    decoded = feeds(files, workers=2)
    np.testing.assert_array_equal(_batches(decoded, 3), _batches(feeds(images[..., :1]), 3))


def test_state_round_trip_continues_the_stream(feeds):
    feed = feeds()
    _batches(feed, 2)
    saved = feed.get_state()
    after = _batches(feed, 3)
    restored = feeds()
    restored.set_state(saved)
    assert restored.position == 2
    np.testing.assert_array_equal(_batches(restored, 3), after)
    with pytest.raises(ValueError, match="position of another episode stream: it was saved with .*'seed': 0"):
        feeds(seed=1).set_state(saved)
    with pytest.raises(ValueError, match="state must be a HostEpisodes.get_state\\(\\) dict"):
        feed.set_state({"next_index": 2})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(shots=2, queries=2), "every class needs at least shots \\+ queries = 4 images.*class 1 has 3"),
        (dict(ways=5), "ways must be at most the number of classes, 4; got ways=5"),
        (dict(counts=None), "offsets and counts go together"),
        (dict(offsets=None, counts=None), "images must be \\[classes, examples, H, W, C\\] without offsets"),
        (dict(tasks_per_step=0), "tasks_per_step must be a positive integer"),
        (dict(workers=-1), "workers must be a non-negative integer"),
        (dict(seed=-1), "seed must be an integer >= 0, got -1"),
        (dict(images=np.zeros((40, 3, 3, 2), np.float32)), "images must be a uint8 array.*got float32"),
    ],
)
def test_bad_arguments_are_refused(feeds, kwargs, message):
    with pytest.raises(ValueError, match=message):
        feeds(**kwargs)


def test_without_grain_metajax_imports_and_the_pipeline_names_the_extra(monkeypatch):
    script = "import sys; sys.modules['grain'] = None; import metajax; print(metajax.tasks.HostEpisodes.__name__)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "HostEpisodes"  # the library imports without grain
    monkeypatch.setitem(sys.modules, "grain", None)  # import grain raises ImportError
    with pytest.raises(ImportError, match="HostEpisodes needs the grain package, which is not installed; install it"):
        HostEpisodes(_id_images(), np.array(OFFSETS), np.array(COUNTS), ways=2, shots=1, queries=1,
                     tasks_per_step=2, seed=0)  # fmt: skip
    with pytest.raises(ImportError, match="with pip install 'metajax\\[grain\\]'"):
        HostEpisodes(_id_images()[:36].reshape(4, 9, 3, 3, 2), ways=2, shots=1, queries=1, tasks_per_step=2, seed=0)


def _learner():
    return metajax.ProtoNet(models.MLP(hidden=(8,), out=None), ways=3)


COMMON = dict(key=jax.random.key(1), meta_batch=4, log_every=1, progress=False)


def _reference(feed, optimizer, steps: int):
    """Params and losses of ``steps`` optimizer steps on the feed's batches made episodes with numpy, no trainer."""
    learner = _learner()
    first = init_state(learner, feed, optimizer, COMMON["key"])  # the trainer's initial params and key
    params, opt_state, key = first.params, optimizer.init(first.params), jax.random.wrap_key_data(first.key)
    losses = []
    for _ in range(steps):
        key, _, k_loss = jax.random.split(key, 3)
        x = np.asarray(next(feed)).astype(np.float32) / 255  # [T, ways, 1 + 2, H, W, C]
        labels = np.broadcast_to(np.arange(3), (4, 3))
        episodes = metajax.Episode(x[:, :, 0], labels, x[:, :, 1:].reshape(4, 6, SIDE, SIDE, 2),
                                   np.repeat(labels, 2, axis=1))  # fmt: skip

        def mean_loss(p, episodes=episodes, k_loss=k_loss):
            return jnp.mean(jax.vmap(learner.loss, (None, 0, 0))(p, episodes, jax.random.split(k_loss, 4))[0])

        loss, grads = jax.value_and_grad(mean_loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params, losses = optax.apply_updates(params, updates), [*losses, float(loss)]
    return params, losses


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_trainer_fed_by_the_pipeline_matches_an_independent_loop(feeds, steps_per_call):
    optimizer = optax.sgd(0.5)  # not Adam: its normalisation turns rounding in near-zero gradients into whole steps
    state, history = metajax.train(_learner(), feeds(), optimizer, num_steps=3, steps_per_call=steps_per_call, **COMMON)
    params, losses = _reference(feeds(), optimizer, 3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state.params, params)
    logged = [h["loss"] for h in history] if steps_per_call == 1 else [history[0]["loss"]]
    np.testing.assert_allclose(logged, losses if steps_per_call == 1 else [np.mean(losses)], rtol=1e-5)


def test_resume_from_a_checkpoint_continues_the_episode_stream(feeds, tmp_path):
    optimizer = optax.adam(1e-2)
    straight_feed = feeds()
    straight, full = metajax.train(_learner(), straight_feed, optimizer, num_steps=6, **COMMON)
    checkpointer = Checkpointer(tmp_path, every=3)
    metajax.train(_learner(), feeds(), optimizer, num_steps=3, checkpointer=checkpointer, **COMMON)
    assert checkpointer.pipeline_state(3)["position"] == 3
    like = init_state(_learner(), feeds(), optimizer, COMMON["key"])
    half, _ = checkpointer.restore(like)
    resumed_feed = feeds()
    with pytest.raises(ValueError, match="has served 0 batches while state is at step 3.*pipeline_state\\(3\\)"):
        metajax.train(_learner(), resumed_feed, optimizer, num_steps=6, state=half, **COMMON)
    resumed_feed.set_state(checkpointer.pipeline_state(3))
    resumed, rest = metajax.train(_learner(), resumed_feed, optimizer, num_steps=6, state=half, **COMMON)
    assert [h["step"] for h in rest] == [4, 5, 6]
    np.testing.assert_array_equal([h["loss"] for h in rest], [h["loss"] for h in full[3:]])
    jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)
    np.testing.assert_array_equal(next(resumed_feed), next(straight_feed))  # both at episode batch 7
    checkpointer.close()


def test_a_feed_that_does_not_fit_the_run_is_refused(feeds):
    with pytest.raises(ValueError, match="meta_batch must equal the episode feed's tasks_per_step \\(4\\), got"):
        metajax.train(_learner(), feeds(), optax.adam(1e-2), num_steps=1, **{**COMMON, "meta_batch": 5})
    feed, optimizer = feeds(), optax.adam(1e-2)
    step = metajax.make_train_step(_learner(), feed, optimizer, meta_batch=4, steps_per_call=2)
    state = init_state(_learner(), feed, optimizer, COMMON["key"])
    with pytest.raises(ValueError, match="batches must hold one fed batch per meta-step, 2; got 1"):
        step(state, (next(feed),))
