"""metajax: meta-learning in JAX. Every learner is a pure function of (params, task, key)."""

from metajax import algorithms, continual, datasets, distributed, learner, losses, models, rl, tasks
from metajax.algorithms import (
    ANIL,
    FEAT,
    MAML,
    SNAIL,
    FirstOrder,
    Implicit,
    MatchingNet,
    MetaGradient,
    MetaSGD,
    ProtoNet,
    Reptile,
    SecondOrder,
    TransformerICL,
    inner_loop,
)
from metajax.episode import Episode, StreamBatch, validate_episode
from metajax.evaluation import confidence_interval, evaluate
from metajax.learner import Learner, MetaObjective, OnlineLearner
from metajax.training import Divergence, DivergenceError, TrainState, init_state, make_train_step, meta_step, train

__version__ = "0.1.0"

# Submodules with heavier imports (orbax, matplotlib) load on first use: ``metajax.checkpoint``
# and ``metajax.plots`` work after ``import metajax``.
_LAZY = ("checkpoint", "plots")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"metajax.{name}")
    raise AttributeError(f"module 'metajax' has no attribute {name!r}")


__all__ = [
    "ANIL",
    "FEAT",
    "MAML",
    "SNAIL",
    "Divergence",
    "DivergenceError",
    "Episode",
    "FirstOrder",
    "Implicit",
    "Learner",
    "MatchingNet",
    "MetaGradient",
    "MetaObjective",
    "MetaSGD",
    "OnlineLearner",
    "ProtoNet",
    "Reptile",
    "SecondOrder",
    "StreamBatch",
    "TrainState",
    "TransformerICL",
    "algorithms",
    "checkpoint",
    "confidence_interval",
    "continual",
    "datasets",
    "distributed",
    "evaluate",
    "init_state",
    "inner_loop",
    "learner",
    "losses",
    "make_train_step",
    "meta_step",
    "models",
    "plots",
    "rl",
    "tasks",
    "train",
    "validate_episode",
]
