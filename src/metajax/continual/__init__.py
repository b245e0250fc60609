"""Meta-continual learning: task streams, online learners (OML, La-MAML, MER and baselines), lifelong metrics.

Every online learner is a frozen dataclass with pure ``init_state``, ``update`` and
``predict`` (the :class:`metajax.learner.OnlineLearner` protocol); the drivers in
:mod:`metajax.continual.protocol` run it over a stream as one ``lax.scan`` per chunk of steps.
"""

from metajax.continual.baselines import EWC, ExperienceReplay, Finetune
from metajax.continual.buffer import ReplayBuffer
from metajax.continual.lamaml import LaMAML
from metajax.continual.mer import MER
from metajax.continual.metrics import (
    average_accuracy,
    backward_transfer,
    check_accuracy_matrix,
    forgetting,
    forward_transfer,
    learning_accuracy,
    online_cumulative_accuracy,
    summarize,
)
from metajax.continual.oml import OML, ConvRepresentation, reset_outputs
from metajax.continual.plots import plot_accuracy_matrix
from metajax.continual.protocol import StreamState, evaluate_tasks, run_lifelong, run_sequence
from metajax.tasks.lifelong import NEW, OOD, SEEN, LifelongStream, Schedule, draw_batch
from metajax.tasks.sequences import TaskSequence, class_incremental, domain_incremental, incremental_sine, rotate
from metajax.tasks.trajectories import SineTrajectories, Trajectories

__all__ = [
    "ConvRepresentation",
    "EWC",
    "MER",
    "NEW",
    "OML",
    "OOD",
    "SEEN",
    "ExperienceReplay",
    "Finetune",
    "LaMAML",
    "LifelongStream",
    "ReplayBuffer",
    "Schedule",
    "SineTrajectories",
    "StreamState",
    "TaskSequence",
    "Trajectories",
    "average_accuracy",
    "backward_transfer",
    "check_accuracy_matrix",
    "class_incremental",
    "domain_incremental",
    "draw_batch",
    "evaluate_tasks",
    "forgetting",
    "forward_transfer",
    "incremental_sine",
    "learning_accuracy",
    "online_cumulative_accuracy",
    "plot_accuracy_matrix",
    "reset_outputs",
    "rotate",
    "run_lifelong",
    "run_sequence",
    "summarize",
]
