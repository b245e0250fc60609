"""Learners: frozen configurations with pure ``init``, ``loss``, ``adapt``, ``predict``, ``evaluate``."""

from metajax.algorithms.anil import ANIL
from metajax.algorithms.feat import FEAT
from metajax.algorithms.inner import (
    FirstOrder,
    Implicit,
    MetaGradient,
    SecondOrder,
    conjugate_gradient,
    inner_loop,
    optimize,
    scale_by_learned_rates,
)
from metajax.algorithms.maml import MAML
from metajax.algorithms.matchingnet import MatchingNet
from metajax.algorithms.metasgd import MetaSGD
from metajax.algorithms.protonet import ProtoNet
from metajax.algorithms.reptile import Reptile
from metajax.algorithms.snail import SNAIL
from metajax.algorithms.transformer import TransformerICL

__all__ = [
    "ANIL",
    "FEAT",
    "MAML",
    "MatchingNet",
    "MetaSGD",
    "ProtoNet",
    "Reptile",
    "SNAIL",
    "TransformerICL",
    "FirstOrder",
    "Implicit",
    "MetaGradient",
    "SecondOrder",
    "conjugate_gradient",
    "inner_loop",
    "optimize",
    "scale_by_learned_rates",
]
