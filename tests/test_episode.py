"""Episode validation names what is wrong."""

import jax.numpy as jnp
import pytest

from metajax import Episode, validate_episode


def _ep(s=(5, 1), q=(7, 1), sy=None, qy=None, dtype=jnp.float32):
    return Episode(jnp.zeros(s, dtype), jnp.zeros(sy or s), jnp.zeros(q, dtype), jnp.zeros(qy or q))


def test_valid_episodes_pass():
    validate_episode(_ep(), batched=False)
    validate_episode(_ep((3, 5, 1), (3, 7, 1)), batched=True)
    validate_episode(
        Episode(jnp.zeros((4, 8, 8, 1)), jnp.zeros(4, jnp.int32), jnp.zeros((6, 8, 8, 1)), jnp.zeros(6, jnp.int32)),
        batched=False,
    )


@pytest.mark.parametrize(
    ("episode", "batched", "message"),
    [
        (_ep((3, 5, 1), (2, 7, 1)), True, "leading task axis of equal size"),
        (_ep((5,), (7,)), False, r"support_x must have shape \[examples, \*features\]"),
        (_ep(sy=(4, 1)), False, "support_y must have the same leading"),
        (_ep(q=(7, 2), qy=(7, 1)), False, "must share feature shape"),
        (_ep(dtype=jnp.int32), False, "support_x must be floating point, got dtype int32"),
    ],
)
def test_bad_episodes_are_named(episode, batched, message):
    with pytest.raises((ValueError, TypeError), match=message):
        validate_episode(episode, batched=batched)


def test_non_episode_is_rejected():
    with pytest.raises(TypeError, match="must be a metajax.Episode, got dict"):
        validate_episode({}, batched=False)
