"""``metajax train --task nav2d|cheetah-vel|cheetah-dir``: meta-RL through the train command's run machinery.

The task is an environment (:class:`metajax.rl.Navigation2D`, MAML's 2D navigation;
:class:`metajax.rl.HalfCheetahVel` and :class:`metajax.rl.HalfCheetahDir`, its Brax
locomotion tasks) that the trainer sees as :class:`metajax.rl.EnvTasks`; the learners are those of
:mod:`metajax.rl.registry`. Run folders, ``metrics.json``, checkpoints, ``--resume`` and
``metajax eval`` are the supervised ones; ``eval`` holds, per adaptation step, the mean
and ci95 of ``return`` (the undiscounted return of an episode, averaged over the task's
episodes, then over the new tasks).
"""

from __future__ import annotations

import argparse

from metajax.app.errors import CommandError, flag
from metajax.rl import objectives, registry

TASKS = ("nav2d", "cheetah-vel", "cheetah-dir")
ALGORITHMS = registry.NAMES
UNTRAINED = registry.UNTRAINED
# Flags of the RL tasks only; the estimator flags of maml-rl only; the outer-step flags of promp
# only; the trust region of maml-trpo only.
FLAGS = ("episodes", "horizon", "estimator", "first_order", "outer_steps", "clip_eps", "max_kl")
ALGO_FLAGS = {"maml-rl": ("estimator", "first_order"), "promp": ("outer_steps", "clip_eps"), "maml-trpo": ("max_kl",)}
# The learners whose meta-step is their own (metajax.learner.MetaUpdater): one device, tasks vmapped.
META_UPDATERS = ("promp", "maml-trpo")
# MAML's 2D navigation protocol (Finn et al., 2017, sec. 5.3 and appendix): 20 episodes per
# task and step, inner step size 0.1, horizon 100, evaluated after up to 3 steps.
DEFAULTS = {
    "inner_lr": 0.1,
    "inner_steps": 1,
    "meta_batch": 20,
    "steps": 500,
    "log_every": 10,
    "checkpoint_every": 50,
    "eval_steps": 3,
    "episodes": 20,
    "horizon": 100,
    "estimator": "dice",
    "first_order": False,
}
# Its locomotion protocol where it differs: 40 tasks per meta-step, horizon 200.
LOCOMOTION = {"meta_batch": 40, "horizon": 200}
TASK_DEFAULTS = {"cheetah-vel": LOCOMOTION, "cheetah-dir": LOCOMOTION}
# ProMP's reference settings (Rothfuss et al., 2019: num_ppo_steps=5, clip_eps=0.2) and MAML's
# trust region (rllab's max_kl 0.01), filled for their learner only, so the other learners' run
# records (and their resumes) are unchanged.
OWN_DEFAULTS = {"promp": {"outer_steps": 5, "clip_eps": 0.2}, "maml-trpo": {"max_kl": 0.01}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The RL flags of ``metajax train``."""
    parser.add_argument("--episodes", type=int, default=None, help="RL tasks: episodes per task and inner step (20)")
    parser.add_argument(
        "--horizon", type=int, default=None, help="RL tasks: steps per episode (default 100; 200 on the cheetahs)"
    )
    parser.add_argument(
        "--estimator",
        choices=objectives.ESTIMATORS,
        default=None,
        help="maml-rl: inner surrogate whose Hessian the second-order meta-gradient uses (default dice)",
    )
    parser.add_argument("--first-order", action="store_true", default=None, help="maml-rl: first-order meta-gradient")
    parser.add_argument(
        "--outer-steps", type=int, default=None, help="promp: optimizer steps per sampled batch of trajectories (5)"
    )
    parser.add_argument(
        "--clip-eps", type=float, default=None, help="promp: PPO clip range of the likelihood ratio (0.2)"
    )
    parser.add_argument(
        "--max-kl", type=float, default=None, help="maml-trpo: trust region, the mean KL one meta-step may move (0.01)"
    )


def check(args: argparse.Namespace, given) -> None:
    """Refuse an RL learner on a supervised task (and back), and RL flags where they do not apply.

    ``given(names)`` is the flag of the first of ``names`` set on the command line, or ``None``.
    """
    rl_task, rl_algo = args.task in TASKS, args.algo in ALGORITHMS
    if rl_algo and not rl_task:
        raise CommandError(f"--algo {args.algo} needs an RL task ({', '.join(TASKS)}), not --task {args.task}.")
    if rl_task and not rl_algo:
        raise CommandError(
            f"--algo {args.algo} needs a supervised task, not --task {args.task}; "
            f"the RL learners are {', '.join(ALGORITHMS)}."
        )
    if not rl_task and given(FLAGS):
        raise CommandError(f"{given(FLAGS)} applies to the RL tasks ({', '.join(TASKS)}) only, not --task {args.task}.")
    for algo, names in ALGO_FLAGS.items():
        if rl_algo and args.algo != algo and given(names):
            raise CommandError(f"{given(names)} applies to --algo {algo} only, not --algo {args.algo}.")
    if args.algo in META_UPDATERS:
        spread = {
            "--task-batching map": args.task_batching == "map",
            "--devices": args.devices not in (None, 1),
            "--mesh": args.mesh,
        }
        spread["--coordinator"] = args.coordinator is not None
        name = next((name for name, given_here in spread.items() if given_here), None)
        if name is not None:
            raise CommandError(
                f"{name} does not apply to --algo {args.algo}: it meta-updates on one device, its tasks vmapped."
            )
    if args.algo in UNTRAINED and given(("steps",)):
        raise CommandError(f"--algo {args.algo} is not meta-trained (0 meta-steps); drop --steps.")


def fill_defaults(args: argparse.Namespace) -> None:
    """The RL defaults of the flags not given (``--steps 0`` for the untrained baseline, a learner's own for it)."""
    defaults = {**DEFAULTS, **TASK_DEFAULTS.get(args.task, {})}
    defaults = {**defaults, "steps": 0} if args.algo in UNTRAINED else defaults
    for name, value in {**defaults, **OWN_DEFAULTS.get(args.algo, {})}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("episodes", "horizon", "outer_steps"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise CommandError(f"{flag(name)} must be a positive integer, got {getattr(args, name)}.")
    if args.max_kl is not None and not args.max_kl > 0:
        raise CommandError(
            f"--max-kl must be a positive number, the mean KL one meta-step may move; got {args.max_kl}."
        )
    if args.clip_eps is not None and not 0 < args.clip_eps < 1:
        raise CommandError(
            f"--clip-eps must be in (0, 1), PPO's clip range of the likelihood ratio; got {args.clip_eps}."
        )


def build(args: argparse.Namespace):
    """``(task, learner)`` of ``--task`` and ``--algo``: the environment's tasks and the RL learner."""
    from metajax import rl

    environments = {"nav2d": rl.Navigation2D, "cheetah-vel": rl.HalfCheetahVel, "cheetah-dir": rl.HalfCheetahDir}
    env = environments[args.task](horizon=args.horizon)
    learner = registry.build(
        args.algo,
        env,
        episodes=args.episodes,
        inner_lr=args.inner_lr,
        inner_steps=args.inner_steps,
        estimator=args.estimator,
        first_order=bool(args.first_order),
        **{name: getattr(args, name) for name in OWN_DEFAULTS.get(args.algo, {})},
    )
    return rl.EnvTasks(env), learner


def env_steps_per_meta_step(args: argparse.Namespace, learner) -> int:
    """Environment steps one meta-step takes: every task's episodes before, during and after adaptation."""
    return args.meta_batch * args.episodes * args.horizon * (learner.inner_steps + 1)
