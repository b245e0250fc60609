"""Test-wide settings: strict rank promotion, as equinox's tests do."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
