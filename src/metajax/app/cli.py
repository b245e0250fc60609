"""Command line: ``metajax train ...``.

``metajax train`` meta-trains a learner, evaluates it on new tasks and writes
``OUT/metrics.json`` (config, training-curve summary, and per adaptation step the mean
and 95% interval of the metric). The defaults are the MAML paper's sinusoid protocol.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

from metajax import learner as registry
from metajax.app import bench, continual, launch, plot, process, seeds
from metajax.app import config as config_file
from metajax.app import rl as rl_app
from metajax.app.errors import (
    CommandError,
    check_eval,
    check_finite,
    check_positive_ints,
    check_seed,
    flag,
    run_command,
    warn,
)
from metajax.app.runs import (
    JsonLines,
    check_out,
    claim,
    machine,
    read_json_lines,
    refuse_other_settings,
    require_loggers,
    resume_or_exit,
    scalar_writers,
    settings,
    write_json_atomic,
)

GRADIENT_ALGORITHMS = registry.names(family="gradient")
METRIC_ALGORITHMS = registry.names(family="metric")
ATTENTION_ALGORITHMS = registry.names(family="attention")
# The image tasks are the names of tasks.benchmark (tasks.BENCHMARK_SPLITS; a test checks they agree).
SUPERVISED_TASKS = ("sinusoid", "omniglot", "miniimagenet", "tiered-imagenet", "cifar-fs", "fc100", "cub")
ALGORITHMS = GRADIENT_ALGORITHMS + METRIC_ALGORITHMS + ATTENTION_ALGORITHMS + rl_app.ALGORITHMS
TASKS = SUPERVISED_TASKS + rl_app.TASKS
# MAML paper (Finn et al., 2017): Conv4 with 64 strided filters on Omniglot, 32 max-pooled on
# miniImageNet; ProtoNets and Matching Networks use 64 max-pooled filters on both, as does the
# in-context Transformer's embedding (SNAIL's Conv4). The other natural-image benchmarks take
# MAML's miniImageNet setting.
DEFAULT_FILTERS = {"omniglot": 64, "miniimagenet": 32, "tiered-imagenet": 32, "cifar-fs": 32, "fc100": 32, "cub": 32}
BN_MODES = ("transductive", "support", "per_step", "running")  # metajax.models.layers.BN_MODES, without importing JAX
# The learners that give the backbone its support inputs and inner step (MAML's class); the
# others normalise with the statistics of the batch they are given.
BN_MODE_ALGORITHMS = ("maml", "fomaml", "imaml", "maml++")
LR_SCHEDULES = ("constant", "cosine")
WANDB_MODES = ("online", "offline", "disabled")
WANDB_FLAGS = ("wandb_project", "wandb_name", "wandb_mode")


def build_parser() -> argparse.ArgumentParser:
    """The ``metajax`` argument parser."""
    parser = argparse.ArgumentParser(prog="metajax", description="Meta-learning in JAX.")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="meta-train, evaluate on new tasks, write OUT/metrics.json")
    t.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML file of flags (configs/; flags given override it)",
    )
    t.add_argument("--algo", choices=ALGORITHMS, default="maml", help="learner (default: maml)")
    t.add_argument("--task", choices=TASKS, default="sinusoid", help="task distribution (default: sinusoid)")
    t.add_argument("--shots", type=int, default=None, help="support examples per task or class (default 10)")
    t.add_argument(
        "--query",
        type=int,
        default=None,
        help="query examples per task (sinusoid, default: --shots) or per class (default 15)",
    )
    t.add_argument(
        "--test-query",
        type=int,
        default=None,
        help="query examples per test episode, per task or per class (default: --query; the papers use 15 per class)",
    )
    # The flags of some tasks or learners only default to None, so that giving one elsewhere is refused.
    t.add_argument("--ways", type=int, default=None, help="classes per test episode (image tasks; default 5)")
    t.add_argument("--train-ways", type=int, default=None, help="classes per training episode (default: --ways)")
    t.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: $METAJAX_DATA)")
    t.add_argument("--backbone", choices=("conv4", "resnet12"), default=None, help="image backbone (default conv4)")
    t.add_argument(
        "--filters", type=int, default=None, help="Conv4 filters (default: 64 Omniglot, 32 miniImageNet MAML)"
    )
    t.add_argument(
        "--meta-batch", type=int, default=None, help="tasks per meta-step (default 25; 20 on nav2d, 40 on the cheetahs)"
    )
    t.add_argument(
        "--inner-steps", type=int, default=None, help="inner steps during meta-training (default 1; imaml 10)"
    )
    t.add_argument(
        "--inner-lr", type=float, default=None, help="inner SGD step size (default 0.01; 0.1 on the RL tasks)"
    )
    t.add_argument("--meta-lr", type=float, default=1e-3, help="Adam step size of the outer loop (default 1e-3)")
    t.add_argument("--lr-decay-every", type=int, default=None, help="halve the meta step size every N steps")
    t.add_argument(
        "--meta-lr-schedule",
        choices=LR_SCHEDULES,
        default=None,
        help="meta step size over the run: constant, or cosine annealing from --meta-lr to --min-meta-lr over "
        "--steps (default constant; cosine for maml++)",
    )
    t.add_argument(
        "--min-meta-lr", type=float, default=None, help="the cosine schedule's final meta step size (default 1e-5)"
    )
    t.add_argument("--steps", type=int, default=None, help="meta-steps (default 70000; 500 on the RL tasks)")
    t.add_argument("--time-limit", type=float, default=None, help="stop meta-training after this many minutes")
    t.add_argument("--seed", type=int, default=0, help="PRNG seed in [0, 2**32) (default 0)")
    t.add_argument(
        "--seeds",
        type=seeds.parse,
        default=None,
        help="one run per seed (0,1,2) in OUT/seed-S; OUT/metrics.json aggregates them across seeds",
    )
    t.add_argument("--out", type=Path, required=True, help="output directory (refused if it holds another run)")
    t.add_argument("--eval-tasks", type=int, default=600, help="new tasks at meta-test (default 600)")
    t.add_argument(
        "--eval-steps",
        type=int,
        default=None,
        help=f"inner steps at meta-test (default: --inner-steps for {', '.join(TRAINED_STEPS_AT_TEST)}; "
        "else 10, 3 on Omniglot and the RL tasks)",
    )
    t.add_argument(
        "--feat-contrastive",
        type=float,
        default=None,
        help="FEAT's contrastive regulariser weight (the paper's balance, 0.1 to 1; "
        f"default {_default('feat_contrastive')}: off)",
    )
    t.add_argument(
        "--imaml-prox",
        type=float,
        default=None,
        help=f"iMAML proximal strength lambda (default {_default('imaml_prox')})",
    )
    t.add_argument(
        "--imaml-cg-steps",
        type=int,
        default=None,
        help=f"iMAML conjugate-gradient steps (default {_default('imaml_cg_steps')})",
    )
    t.add_argument(
        "--imaml-cg-damping",
        type=float,
        default=None,
        help="added to lambda in iMAML's implicit-gradient system (I + H/(lambda + damping)) v = g "
        f"(default {_default('imaml_cg_damping')})",
    )
    t.add_argument(
        "--imaml-inner-clip",
        type=float,
        default=None,
        help=f"clip each iMAML inner gradient to this global norm (default {_default('imaml_inner_clip')}; 0: off)",
    )
    t.add_argument(
        "--bn-mode",
        choices=BN_MODES,
        default=None,
        help="batch norm of the image backbones: transductive (statistics of the batch, MAML's), support "
        "(support statistics for the queries), per_step (BN weights per inner step, MAML++'s) or running "
        "(batch statistics in meta-training, which keeps their moving averages, momentum 0.9, in the checkpoint; "
        "evaluation normalises with the averages) (default transductive; per_step for maml++)",
    )
    t.add_argument(
        "--msl-epochs",
        type=int,
        default=None,
        help=f"maml++: epochs of the multi-step loss (default {_default('msl_epochs')}; 0: off)",
    )
    t.add_argument(
        "--first-order-epochs",
        type=int,
        default=None,
        help="maml++: epochs of first-order meta-gradients before second order "
        f"(default {_default('first_order_epochs')})",
    )
    t.add_argument(
        "--epoch-steps",
        type=int,
        default=None,
        help=f"maml++: meta-steps per epoch of its schedules (default {_default('epoch_steps')})",
    )
    t.add_argument(
        "--steps-per-call", type=int, default=None, help="meta-steps per dispatch (default: 100 for sinusoid)"
    )
    t.add_argument(
        "--log-every",
        type=int,
        default=None,
        help="meta-steps per logged training entry (default 1000; 10 on the RL tasks)",
    )
    t.add_argument(
        "--task-batching", choices=("vmap", "map"), default=None, help="how tasks are batched (default: per backend)"
    )
    t.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="meta-steps between checkpoints in OUT/checkpoints (0: none; default 10000 sinusoid, 500 images, 50 RL)",
    )
    t.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the run whose --out was DIR from its newest checkpoint, with its settings (README)",
    )
    t.add_argument(
        "--step", type=int, default=None, help="with --resume: continue from the checkpoint of this meta-step"
    )
    launch.add_arguments(t)
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its files only)")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events to OUT/tensorboard")
    t.add_argument(
        "--wandb", action="store_true", help="also log to Weights & Biases, files in OUT/wandb (metajax[wandb])"
    )
    t.add_argument("--wandb-project", default=None, help="with --wandb: the W&B project (default metajax)")
    t.add_argument("--wandb-name", default=None, help="with --wandb: the W&B run's name (default: --out)")
    t.add_argument(
        "--wandb-mode",
        choices=WANDB_MODES,
        default=None,
        help="with --wandb: sync to the W&B server (online), keep the run on disk for wandb sync (offline), or "
        "log nothing (disabled) (default: $WANDB_MODE, else online)",
    )
    rl_app.add_arguments(t)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--host-pipeline",
        action="store_true",
        help="draw training episodes on CPU workers (Grain, metajax[grain]) and feed them to the device (README)",
    )
    t.add_argument("--workers", type=int, default=None, help="with --host-pipeline: reader threads (default 2)")
    continual.add_parser(sub)
    bench.add_parser(sub)
    plot.add_parser(sub)
    e = sub.add_parser("eval", help="evaluate a run's newest checkpoint on new tasks; write RUN/eval.json")
    e.add_argument("run", type=Path, help="the --out folder of a metajax train run")
    e.add_argument("--eval-tasks", type=int, default=600, help="new tasks (default 600)")
    e.add_argument("--eval-steps", type=int, default=None, help="inner steps (default: the run's)")
    e.add_argument("--test-query", type=int, default=None, help="query examples per test episode (default: the run's)")
    e.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: the run's, or $METAJAX_DATA)")
    e.add_argument("--seed", type=int, default=None, help="PRNG seed of the test tasks (default: the run's)")
    e.add_argument("--step", type=int, default=None, help="the checkpoint of this meta-step (default: the newest)")
    for command in sub.choices.values():  # --debug also after the command; SUPPRESS keeps the global one's value
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _default(name: str) -> str:
    """A learner flag's default (the registry factory's) as its help shows it."""
    return f"{LEARNER_DEFAULTS[name]:g}"


def _network(args: argparse.Namespace, family: str):
    """``out -> flax module`` of ``--task`` and ``--backbone`` (``out=None``: the feature extractor)."""
    from metajax import models
    from metajax.models.conv import default_conv_impl

    if args.task == "sinusoid":
        return lambda out: models.MLP(hidden=(40, 40), out=out)
    bn = dict(bn=args.bn_mode, bn_steps=args.inner_steps if args.bn_mode == "per_step" else 1)
    # Metric and attention learners share the embedding's weights across tasks, which picks the CPU formulation.
    embedding = family in ("metric", "attention")
    impl = default_conv_impl(shared_weights=embedding)
    if args.backbone == "resnet12":
        return lambda out: models.ResNet12(out=out, impl=impl, **bn)
    filters = args.filters or (64 if embedding else DEFAULT_FILTERS[args.task])
    # MAML's Omniglot network is strided; MAML++'s reference max-pools on every dataset.
    pool = "stride" if args.task == "omniglot" and not embedding and args.algo != "maml++" else "max"
    return lambda out: models.Conv4(filters=filters, pool=pool, out=out, impl=impl, **bn)


def build_learner(args: argparse.Namespace, ways: int | None = None):
    """The registered learner named by ``--algo`` for the task's kind and model (``ways`` for classification).

    Flags not given take their defaults for the task, so parsed arguments build what ``train`` would.
    """
    _fill_defaults(args)
    if args.task in rl_app.TASKS:
        return rl_app.build(args)[1]
    entry = registry.entry(args.algo)
    kind = "regression" if args.task == "sinusoid" else "classification"
    if kind not in entry.kinds:
        raise CommandError(f"--algo {args.algo} needs a classification task, not --task {args.task}.")
    spec = registry.Spec(
        kind,
        1 if kind == "regression" else cast(int, ways),  # Spec refuses ways=None ("outputs must be a positive integer")
        _network(args, entry.family),
        inner_lr=args.inner_lr,
        inner_steps=args.inner_steps,
    )
    options = {option: getattr(args, name) for flags in LEARNER_OPTIONS.values() for name, option in flags.items()}
    return registry.build(args.algo, spec, **options)


def build_tasks(args: argparse.Namespace):
    """``(train, test)`` task distributions named by ``--task``."""
    import dataclasses

    from metajax import tasks

    if args.task in rl_app.TASKS:
        task = rl_app.build(args)[0]
        return task, task
    test_query = args.query if args.test_query is None else args.test_query
    if args.task == "sinusoid":
        train = tasks.Sinusoid(shots=args.shots, queries=args.query)
        return train, dataclasses.replace(train, queries=test_query)
    query = 15 if args.query is None else args.query
    host = getattr(args, "host_pipeline", False)  # the training images stay on the host: only the test split moves
    if host:
        test = tasks.from_images(tasks.benchmark_images(args.task, "test", root=args.data_root), ways=args.ways,
                                 shots=args.shots, queries=query)  # fmt: skip
    else:
        bench = tasks.benchmark(args.task, ways=args.ways, shots=args.shots, queries=query, root=args.data_root)
        test = bench.test
    if test_query is not None:
        try:
            test = dataclasses.replace(test, queries=test_query)
        except ValueError as error:  # its message names the task's queries, which --query also sets
            raise CommandError(f"--test-query {test_query}: {error}") from error
    if host:
        return _host_pipeline(args, tasks.benchmark_images(args.task, "train", root=args.data_root), query), test
    return dataclasses.replace(bench.train, ways=args.train_ways or args.ways), test


# Flags that set only image tasks, only iMAML; their defaults once they are known to apply.
IMAGE_FLAGS = ("ways", "train_ways", "data_root", "backbone", "filters", "bn_mode")
# Flags of one learner's own options (refused with any other --algo): flag -> the registry option it sets.
LEARNER_OPTIONS = {
    "imaml": {
        "imaml_prox": "prox",
        "imaml_cg_steps": "cg_steps",
        "imaml_cg_damping": "cg_damping",
        "imaml_inner_clip": "inner_clip",
    },
    "feat": {"feat_contrastive": "contrastive"},
    "maml++": {"msl_epochs": "msl_epochs", "first_order_epochs": "first_order_epochs", "epoch_steps": "epoch_steps"},
}
LEARNER_FLAGS = {algo: tuple(flags) for algo, flags in LEARNER_OPTIONS.items()}
# Their defaults are the registry factories' own, so the library and the command agree.
LEARNER_DEFAULTS = {
    name: registry.entry(algo).defaults[option]
    for algo, flags in LEARNER_OPTIONS.items()
    for name, option in flags.items()
}
DEFAULTS = {
    "ways": 5,
    "backbone": "conv4",
    "inner_steps": 1,
    "bn_mode": "transductive",
    "meta_lr_schedule": "constant",
    **LEARNER_DEFAULTS,
}
# Where a learner's default differs from DEFAULTS: iMAML's implicit gradient is that of the
# proximal problem's solution, which one inner step does not approach; MAML++ (Antoniou et al.
# 2019) anneals the meta step size and has batch-norm weights per inner step.
ALGO_DEFAULTS: dict[str, dict[str, object]] = {
    "imaml": {"inner_steps": 10},
    "maml++": {"meta_lr_schedule": "cosine", "bn_mode": "per_step"},
}
# What a run recorded before a learner's flag existed ran with, where that differs from the
# flag's default: a record lacking the flag is evaluated (metajax eval) as it was trained.
# iMAML ran Implicit(prox, cg_steps) undamped and without inner clipping until
# --imaml-cg-damping and --imaml-inner-clip came (issue 17, 3a0d3ca).
LEGACY_DEFAULTS: dict[str, dict[str, object]] = {"imaml": {"imaml_cg_damping": 0.0, "imaml_inner_clip": 0.0}}
# Learners whose protocol tests with the inner steps they were trained with: Meta-SGD's step
# sizes are learned for those steps, ANIL's head overshoots past them, iMAML trains on the
# inner solution they reach, MAML++ learns a step size and batch-norm weights per step. The
# others follow MAML's protocol (10 test steps on sinusoid, 3 on Omniglot, after training with
# fewer).
TRAINED_STEPS_AT_TEST = ("metasgd", "anil", "imaml", "maml++")
# The supervised defaults of the flags whose RL defaults differ (rl_app.DEFAULTS).
SUPERVISED_DEFAULTS = {"shots": 10, "inner_lr": 0.01, "meta_batch": 25, "steps": 70000, "log_every": 1000}


def _check_args(args: argparse.Namespace) -> None:
    """Refuse flags that do not apply, fill in the defaults of those that do; then refuse bad values."""
    _refuse_inapplicable(args)
    _fill_defaults(args)
    check_finite(args)
    check_seed(args.seed)
    trained = args.algo not in rl_app.UNTRAINED  # the random baseline takes 0 meta-steps
    check_positive_ints(args, ("meta_batch", "inner_steps", *(("steps",) if trained else ()), "log_every"))
    optional = ("shots", "query", "test_query", "ways", "train_ways", "steps_per_call", "filters", "lr_decay_every")
    check_positive_ints(args, (*optional, "imaml_cg_steps", "epoch_steps"), optional=True)
    check_eval(args)
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise CommandError(f"--checkpoint-every must be non-negative, got {args.checkpoint_every}.")
    if args.step is not None and args.resume is None:
        raise CommandError(f"--step {args.step} picks the checkpoint --resume continues from; pass --resume too.")
    if args.resume is not None and not (args.resume / "checkpoints").is_dir():
        raise CommandError(f"--resume {args.resume} holds no checkpoints/ folder; pass the --out of an earlier run.")
    if args.time_limit is not None and not args.time_limit > 0:
        raise CommandError(f"--time-limit must be positive (minutes), got {args.time_limit}.")
    for name in ("msl_epochs", "first_order_epochs"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise CommandError(f"{flag(name)} must be a non-negative number of epochs (0: off), got {value}.")
    _check_meta_lr_schedule(args)
    for name in ("inner_lr", "meta_lr", "imaml_prox"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise CommandError(f"{flag(name)} must be positive, got {value}.")
    for name in ("imaml_cg_damping", "imaml_inner_clip"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise CommandError(f"{flag(name)} must be non-negative (0: off), got {value}.")
    launch.check(args)
    launch.join(args)
    if launch.is_primary(args):
        check_out(args.out, args.resume, args.overwrite)
    require_loggers(args)


def _check_meta_lr_schedule(args: argparse.Namespace) -> None:
    """Refuse a ``--min-meta-lr`` without the cosine schedule, or one it cannot anneal to."""
    if args.meta_lr_schedule != "cosine":
        if args.min_meta_lr is not None:
            raise CommandError(
                f"--min-meta-lr {args.min_meta_lr} is the end of the cosine schedule; "
                f"pass --meta-lr-schedule cosine (got {args.meta_lr_schedule})."
            )
        return
    if args.lr_decay_every is not None:
        raise CommandError(
            "--lr-decay-every halves the meta step size in stages; --meta-lr-schedule cosine anneals it smoothly."
        )
    if args.min_meta_lr is None:
        args.min_meta_lr = 1e-5
    if not 0 <= args.min_meta_lr <= args.meta_lr:
        raise CommandError(
            f"--min-meta-lr must be in [0, --meta-lr {args.meta_lr}] (the cosine schedule anneals down to it), "
            f"got {args.min_meta_lr}."
        )


def meta_learning_rate(args: argparse.Namespace):
    """The outer Adam's step size: ``--meta-lr``, halved every ``--lr-decay-every`` steps, or cosine-annealed.

    Cosine (MAML++): ``min + (meta_lr - min) (1 + cos(pi t / steps)) / 2`` at meta-step ``t``,
    per step rather than the reference's per epoch.
    """
    import optax

    if args.meta_lr_schedule == "cosine":
        return optax.cosine_decay_schedule(args.meta_lr, args.steps, alpha=args.min_meta_lr / args.meta_lr)
    if args.lr_decay_every:
        return optax.exponential_decay(args.meta_lr, args.lr_decay_every, 0.5, staircase=True)
    return args.meta_lr


def _refuse_inapplicable(args: argparse.Namespace) -> None:
    def given(names):
        return next((flag(n) for n in names if getattr(args, n) is not None), None)

    rl_app.check(args, given)
    if args.task in ("sinusoid", *rl_app.TASKS) and given(IMAGE_FLAGS):
        raise CommandError(f"{given(IMAGE_FLAGS)} does not apply to --task {args.task}; it sets the image tasks.")
    if args.task in rl_app.TASKS and given(("shots", "query", "test_query")):
        raise CommandError(
            f"{given(('shots', 'query', 'test_query'))} does not apply to --task {args.task}; its episodes are "
            "rollouts (--episodes, --horizon)."
        )
    for algo, names in LEARNER_FLAGS.items():
        if args.algo != algo and given(names):
            raise CommandError(f"{given(names)} applies to --algo {algo} only, not --algo {args.algo}.")
    if not args.wandb and given(WANDB_FLAGS):
        raise CommandError(f"{given(WANDB_FLAGS)} sets the Weights & Biases run of --wandb; pass --wandb too.")
    if args.workers is not None and not args.host_pipeline:
        raise CommandError(f"--workers {args.workers} sets the threads of --host-pipeline; pass --host-pipeline too.")
    if args.host_pipeline and (args.task == "sinusoid" or args.task in rl_app.TASKS):
        raise CommandError(f"--host-pipeline draws image episodes (the image tasks), not --task {args.task}.")
    if args.backbone == "resnet12" and args.filters is not None:
        raise CommandError("--filters sets the width of Conv4; --backbone resnet12 has fixed widths.")
    if args.bn_mode not in (None, "transductive") and args.algo not in BN_MODE_ALGORITHMS:
        raise CommandError(
            f"--bn-mode {args.bn_mode} needs a learner that gives the backbone its support set, inner step or running "
            f"statistics ({', '.join(BN_MODE_ALGORITHMS)}); --algo {args.algo} normalises with batch statistics only."
        )
    if args.bn_mode == "per_step" and args.algo == "imaml":
        raise CommandError("--bn-mode per_step needs the inner steps on the tape; --algo imaml differentiates the "
                           "inner solution implicitly. Use --bn-mode transductive, support or running.")  # fmt: skip
    if args.task in rl_app.TASKS:
        return
    ways = DEFAULTS["ways"] if args.ways is None else args.ways
    family = registry.entry(args.algo).family
    if args.train_ways not in (None, ways) and family != "metric":
        # Its head has one output per training way: it would score test episodes on classes they lack.
        raise CommandError(
            f"--train-ways {args.train_ways} differs from --ways {ways}, but --algo {args.algo} has a fixed-size "
            f"head; only the metric learners ({', '.join(METRIC_ALGORITHMS)}) train on other ways than they test."
        )


def _fill_defaults(args: argparse.Namespace) -> None:
    if args.task in rl_app.TASKS:
        rl_app.fill_defaults(args)
        return
    for name, value in {**DEFAULTS, **SUPERVISED_DEFAULTS, **ALGO_DEFAULTS.get(args.algo, {})}.items():
        if getattr(args, name) is None and not (name == "bn_mode" and args.task == "sinusoid"):  # an MLP: no BN
            setattr(args, name, value)


class _Run(NamedTuple):
    """What ``metajax train`` and ``metajax eval`` build from the arguments."""

    train_task: Any
    test_task: Any
    learner: Any
    test_learner: Any
    optimizer: Any
    steps_per_call: int
    eval_steps: int
    task_batching: str


def _prepare(args: argparse.Namespace) -> _Run:
    import optax

    from metajax.training import resolve_task_batching

    train_task, test_task = build_tasks(args)
    try:
        learner = build_learner(args, getattr(train_task, "ways", None))
        # A metric learner classifies any number of ways; a gradient learner's head has the training ways.
        metric = args.algo in METRIC_ALGORITHMS
        test_learner = build_learner(args, test_task.ways) if metric else learner
        steps_per_call = args.steps_per_call or (100 if args.task == "sinusoid" else 1)
        eval_steps = args.eval_steps if args.eval_steps is not None else protocol_eval_steps(args)
        warn_past_training(args, eval_steps)
        task_batching = resolve_task_batching(learner, train_task, args.task_batching)
    except BaseException:
        if getattr(args, "host_pipeline", False):  # a feed's threads end with the command that made it
            train_task.close()
        raise
    optimizer = optax.adam(meta_learning_rate(args))
    return _Run(train_task, test_task, learner, test_learner, optimizer, steps_per_call, eval_steps, task_batching)


def protocol_eval_steps(args: argparse.Namespace) -> int:
    """The test-time inner steps of ``--algo``'s protocol: its trained ones, or MAML's 10 (3 on Omniglot)."""
    if args.algo in TRAINED_STEPS_AT_TEST:
        return args.inner_steps
    return 3 if args.task == "omniglot" else 10


def warn_past_training(args: argparse.Namespace, eval_steps: int) -> None:
    """Warn on stderr when a learner of :data:`TRAINED_STEPS_AT_TEST` is evaluated past its trained inner steps."""
    if args.algo in TRAINED_STEPS_AT_TEST and eval_steps > args.inner_steps:
        warn(
            f"--algo {args.algo} was trained with --inner-steps {args.inner_steps} but is evaluated with "
            f"--eval-steps {eval_steps}; past the steps it was trained for its adaptation may overshoot "
            f"(its protocol tests with {args.inner_steps})."
        )


def _eval_key(seed: int):
    """The key of a run's test tasks: ``metajax eval`` with the run's seed draws the same tasks."""
    import jax

    return jax.random.split(jax.random.key(seed))[1]


def _evaluate(run: _Run, state, key, num_tasks: int) -> dict:
    """The test summary of ``state``'s meta-parameters and model state (``bn="running"``'s statistics)."""
    from metajax.evaluation import evaluate

    return evaluate(run.test_learner, state.params, run.test_task, key=key, num_tasks=num_tasks,
                    num_steps=run.eval_steps, task_batching=run.task_batching,
                    model_state=state.model_state)  # fmt: skip


# Settings a resumed run may change: where and how it is recorded, when it stops, how the same
# meta-steps are grouped and batched on the machine, and the final evaluation. --steps may
# only grow (from the checkpoint's step). The rest (learner, task, model, step sizes, seed,
# meta-batch) define what is learned and are refused.
RESUMABLE = (
    "out", "steps", "time_limit", "no_progress", "log_every", "checkpoint_every",
    "tensorboard", "wandb", *WANDB_FLAGS, "steps_per_call", "task_batching", "eval_tasks", "eval_steps",
    "test_query", "data_root", "config", "workers", *launch.RESUMABLE,
)  # fmt: skip


def train_command(args: argparse.Namespace) -> dict:
    """Run ``metajax train``; returns what it writes to ``OUT/metrics.json``."""
    _check_args(args)
    import jax

    from metajax.training import init_state, train

    run = _prepare(args)  # with --host-pipeline, run.train_task is a feed: closed below whatever happens
    learner, train_task, optimizer = run.learner, run.train_task, run.optimizer
    steps_per_call, task_batching = run.steps_per_call, run.task_batching
    k_train, k_eval = jax.random.split(jax.random.key(args.seed))  # k_eval == _eval_key(args.seed)
    config = settings(args)
    config.update(steps_per_call=steps_per_call, eval_steps=run.eval_steps, task_batching=task_batching)
    log_file = None
    try:
        state, log = init_state(learner, train_task, optimizer, k_train), []
        if args.resume is not None:
            state, log = _resume(args, config, state)
            if args.host_pipeline:
                _restore_position(train_task, args.resume, int(state.step))
        primary, mesh = launch.is_primary(args), launch.mesh(args)
        if primary:
            claim(args.out, args.overwrite)  # the first change to the folder
        log_file = JsonLines(args.out / "log.jsonl", log, scalar_writers(args, config)) if primary else None
        checkpoint_every = args.checkpoint_every
        if checkpoint_every is None:
            checkpoint_every = 10000 if args.task == "sinusoid" else 500
        checkpointer = None
        if checkpoint_every:
            from metajax.checkpoint import Checkpointer

            checkpointer = Checkpointer(args.out / "checkpoints", every=checkpoint_every)
        start_step, t0 = int(state.step), time.perf_counter()
        history: list[dict] = []
        if args.algo in rl_app.UNTRAINED:  # the random baseline: its initialisation is checkpointed as it is
            if checkpointer is not None:
                checkpointer.save(state, config)
        else:
            state, history = train(
                learner,
                train_task,
                optimizer,
                key=k_train,
                state=state,
                checkpointer=checkpointer,
                checkpoint_record=config,
                on_log=lambda _, entry: log_file.append(entry) if log_file else None,
                num_steps=args.steps,
                meta_batch=args.meta_batch,
                steps_per_call=steps_per_call,
                log_every=args.log_every,
                task_batching=task_batching,
                mesh=mesh,
                progress=primary and not args.no_progress,
                max_seconds=None if args.time_limit is None else 60 * args.time_limit,
            )
    finally:
        if log_file:
            log_file.close()
        if args.host_pipeline:
            train_task.close()
    train_seconds = time.perf_counter() - t0
    eval_summary = _evaluate(run, launch.local(state), k_eval, args.eval_tasks)
    history = log + history
    result = {
        "config": config,
        "machine": machine(),
        "train": {
            "steps": int(state.step),
            "seconds": train_seconds,
            "tasks_per_s": (int(state.step) - start_step) * args.meta_batch / train_seconds,
            "loss_first": history[0]["loss"] if history else None,
            "loss_last": history[-1]["loss"] if history else None,
            "curve": history,
        },
        "eval": eval_summary,
    }
    if args.task in rl_app.TASKS:  # meta-training's wall time (compilation included) per environment step
        steps = rl_app.env_steps_per_meta_step(args, learner) * (int(state.step) - start_step)
        result["train"]["env_steps_per_s"] = steps / train_seconds
    if primary:
        write_json_atomic(args.out / "metrics.json", result)
    return result


def _host_pipeline(args: argparse.Namespace, data, queries: int):
    """``--host-pipeline``: a :class:`~metajax.tasks.HostEpisodes` over the training split ``data``, kept on the host.

    ``data``: ``ImageClasses`` or ``RaggedImageClasses`` (host arrays); its episodes are
    those :func:`build_tasks` would draw on the device (``--train-ways`` or ``--ways``,
    ``--shots``, ``queries`` per class), ``--meta-batch`` of them per step.
    """
    from metajax import distributed
    from metajax.tasks.host import HostEpisodes, require_grain

    try:
        require_grain()
    except ImportError as error:
        raise CommandError(f"--host-pipeline: {error}") from error
    mesh = launch.mesh(args)  # with --devices, each batch goes to the devices by task, as the step reads it
    device = None if mesh is None else distributed.task_sharding(mesh)
    return HostEpisodes.from_images(data, ways=args.train_ways or args.ways, shots=args.shots, queries=queries,
                                    tasks_per_step=args.meta_batch, seed=args.seed, device=device,
                                    workers=2 if args.workers is None else args.workers)  # fmt: skip


def _restore_position(feed, run_dir: Path, step: int) -> None:
    """Continue ``--host-pipeline``'s episode stream from the position saved with ``run_dir``'s checkpoint ``step``."""
    from metajax.checkpoint import Checkpointer

    checkpointer = Checkpointer(run_dir / "checkpoints", every=1)
    try:
        position = checkpointer.pipeline_state(step)
    finally:
        checkpointer.close()
    if position is None:
        raise CommandError(
            f"--host-pipeline: the checkpoint of step {step} in {run_dir} holds no episode-stream position, "
            "so the run cannot continue its stream; resume from a checkpoint a --host-pipeline run wrote."
        )
    feed.set_state(position)


def eval_command(args: argparse.Namespace) -> dict:
    """Run ``metajax eval RUN``: evaluate a run's newest checkpoint; returns what it writes to ``RUN/eval.json``."""
    check_eval(args)
    check_seed(args.seed)
    check_positive_ints(args, ("test_query",), optional=True)
    overrides = {name: getattr(args, name) for name in ("eval_steps", "test_query", "data_root")}
    record, train_args, run, state = restore_run(args.run, args.step, overrides)
    seed = train_args.seed if args.seed is None else args.seed
    result = {
        "config": {
            **record,
            "eval_tasks": args.eval_tasks,
            "eval_steps": run.eval_steps,
            "test_query": train_args.test_query,
            "seed": seed,
        },
        "checkpoint_step": int(state.step),
        "machine": machine(),
        "eval": _evaluate(run, state, _eval_key(seed), args.eval_tasks),
    }
    write_json_atomic(args.run / "eval.json", result)
    return result


def restore_run(run_dir: Path, step: int | None = None, overrides: dict | None = None):
    """``(record, train arguments, prepared run, state)`` of checkpoint ``step`` (default: newest) of ``run_dir``.

    The learner and tasks are rebuilt from the checkpoint's record; ``overrides`` (flag name:
    value, ``None`` for keep) replace recorded settings that do not shape the parameters.
    """
    import jax

    from metajax.checkpoint import Checkpointer
    from metajax.training import init_state

    checkpoints = run_dir / "checkpoints"
    if not checkpoints.is_dir():
        raise CommandError(f"{run_dir} holds no checkpoints/ folder; pass the --out of a metajax train run.")
    checkpointer = Checkpointer(checkpoints, every=1)
    try:
        record = _newest_record(checkpointer, step)
        train_args = build_parser().parse_args(["train", "--out", str(run_dir)])
        for name, value in record.items():
            if hasattr(train_args, name):
                setattr(train_args, name, Path(value) if name in ("out", "data_root", "resume") and value else value)
        # A record holds every setting of its time; a flag added since takes the value the run had then.
        for name, value in LEGACY_DEFAULTS.get(train_args.algo, {}).items():
            if name not in record:
                setattr(train_args, name, value)
        _fill_defaults(train_args)
        # The training task only shapes the parameters here: drawn on the device, whatever fed the run.
        train_args.host_pipeline = False
        for name, value in (overrides or {}).items():
            if value is not None:
                setattr(train_args, name, value)
    finally:
        checkpointer.close()
    run = _prepare(train_args)
    like = init_state(run.learner, run.train_task, run.optimizer, jax.random.key(0))
    state, _ = _restore_newest(run_dir, like, step)
    return record, train_args, run, state


def _newest_record(checkpointer, step: int | None) -> dict:
    """The record of checkpoint ``step`` or else of the newest checkpoint whose record reads back."""
    steps = checkpointer.steps()
    if not steps:
        raise CommandError(f"no checkpoint in {checkpointer.directory}.")
    if step is not None and step not in steps:
        raise CommandError(f"--step {step}: no checkpoint at that step in {checkpointer.directory}; there are {steps}.")
    *newer, oldest = [step] if step is not None else steps[::-1]
    for candidate in newer:
        try:
            return checkpointer.record(candidate)
        except RuntimeError as error:  # CorruptCheckpointError
            warn(f"{error} Trying the checkpoint before it.")
    try:
        return checkpointer.record(oldest)
    except RuntimeError as error:
        raise CommandError(str(error)) from error


def _restore_newest(run_dir: Path, like, step: int | None = None):
    """Checkpoint ``step`` (default: the newest readable) of the run ``run_dir``, like ``like``; and its record."""
    state, record = resume_or_exit(run_dir / "checkpoints", like, "", step=step)
    if record is None:
        raise CommandError(f"no checkpoint in {run_dir / 'checkpoints'} to resume from.")
    return state, record


def _resume(args: argparse.Namespace, config: dict, like):
    """The state of ``--resume``'s newest readable checkpoint and its log entries, once its settings fit ``config``.

    A notice on stderr names the settings that changed (only :data:`RESUMABLE` ones may).
    """
    state, record = _restore_newest(args.resume, like, args.step)
    step = int(state.step)
    changed = refuse_other_settings(args.resume, record, config, allowed=RESUMABLE)
    if args.steps < step:
        raise CommandError(
            f"--steps {args.steps} is below the step {step} of --resume {args.resume}'s checkpoint; "
            f"pass --steps {step} or more."
        )
    notice = f"resuming {args.resume} from step {step}"
    if changed:
        notice += " with " + ", ".join(f"{flag(k)} {new} (was {old})" for k, (old, new) in changed.items())
    print(f"metajax train: {notice}.", file=sys.stderr)
    log_path = args.resume / "log.jsonl"
    entries = read_json_lines(log_path) if log_path.is_file() else []
    return state, [e for e in entries if e["step"] <= step]


def _summary_line(result: dict) -> str:
    ev = result["eval"]
    metric = "accuracy" if "accuracy" in ev else next(k for k in ev if isinstance(ev[k], dict))
    steps = ev["num_steps"]
    shown = sorted({0, 1, steps} & set(range(steps + 1)))
    if len(ev[metric]["mean"]) == 1:
        shown = [0]
    nonfinite = ev[metric].get("nonfinite", [0] * len(ev[metric]["mean"]))  # absent from a --seeds summary
    parts = [
        f"step {s}: {ev[metric]['mean'][s]:.4f} +- {ev[metric]['ci95'][s]:.4f}"
        + (f" ({nonfinite[s]} of {ev['num_tasks']} tasks non-finite)" if nonfinite[s] else "")
        for s in shown
    ]
    over = f" (mean of {ev['num_seeds']} seeds, t-interval across them)" if "num_seeds" in ev else ""
    return f"{metric} on {ev['num_tasks']} new tasks{over}, " + ", ".join(parts)


def _train(args: argparse.Namespace) -> int:
    result = seeds.run(args, train_command, _check_args) if args.seeds else train_command(args)
    if launch.is_primary(args):  # the other processes of a multi-host run write nothing
        print(_summary_line(result))
        print(f"wrote {args.out / 'metrics.json'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    print(_summary_line(eval_command(args)))
    print(f"wrote {args.run / 'eval.json'}")
    return 0


def _continual(args: argparse.Namespace) -> int:
    print(continual.table(continual.run(args)))
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


COMMANDS = {"train": _train, "eval": _eval, "continual": _continual, "bench": bench.command, "plot": plot.command}


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments of a ``metajax`` command line, with ``train --config FILE``'s flags read in."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser.parse_args(config_file.expand(argv, commands.choices["train"]))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metajax`` console script.

    Raises:
        CommandError: (a ``SystemExit``) an expected error, already printed as one line; exit status 2, 130 on Ctrl-C.
    """
    given = list(sys.argv[1:] if argv is None else argv)
    args = run_command("train", lambda: parse(given), debug="--debug" in given)  # only train reads a --config

    def body() -> int:
        process.configure()  # before the command starts JAX's backend and allocates its steps' buffers
        return COMMANDS[args.command](args)

    return run_command(args.command, body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
