"""metajax: meta-learning in JAX. Every learner is a pure function of (params, task, key)."""

from metajax import algorithms, datasets, distributed, losses, models, tasks
from metajax.algorithms import (
    ANIL,
    MAML,
    FirstOrder,
    Implicit,
    MatchingNet,
    MetaSGD,
    ProtoNet,
    Reptile,
    SecondOrder,
    inner_loop,
)
from metajax.episode import Episode, validate_episode
from metajax.evaluation import confidence_interval, evaluate
from metajax.training import TrainState, init_state, make_train_step, meta_step, train

__version__ = "0.1.0"

__all__ = [
    "ANIL",
    "MAML",
    "Episode",
    "FirstOrder",
    "Implicit",
    "MatchingNet",
    "MetaSGD",
    "ProtoNet",
    "Reptile",
    "SecondOrder",
    "TrainState",
    "algorithms",
    "confidence_interval",
    "datasets",
    "distributed",
    "evaluate",
    "init_state",
    "inner_loop",
    "losses",
    "make_train_step",
    "meta_step",
    "models",
    "tasks",
    "train",
    "validate_episode",
]
