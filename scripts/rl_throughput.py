"""MAML-RL meta-iterations and environment steps per second: metajax against the usual PyTorch setup.

One meta-iteration of MAML-RL on 2D navigation (Finn et al. 2017, section 5.3), the same
work on both sides: ``--meta-batch`` goals; per goal ``--episodes`` episodes of
``--horizon`` steps with the meta-policy, a linear-feature baseline, one inner
policy-gradient step (the DiCE surrogate, second order), ``--episodes`` episodes with the
adapted policy, their policy-gradient surrogate; one Adam step on the mean over goals.
Gaussian MLP policy 2-100-100-2 with tanh, learned log-std.

* ``metajax``: ``MAMLRL`` in ``metajax.make_train_step``: the rollouts, the tasks and the
  meta-gradient traced into one compiled program (``vmap`` over goals and episodes).
* ``torch-loop``: what a PyTorch user writes (learn2learn's meta-RL examples, MAML's
  PyTorch ports): a Python loop over goals, each rolling out a vectorised environment
  (the ``--episodes`` episodes stepped together, as a gym ``VectorEnv``) in a Python loop
  over time steps, ``torch.autograd.grad(create_graph=True)`` for the inner step, and the
  goals' losses backpropagated into the meta-policy.

Each side runs ``--warmup`` meta-iterations, then ``--steps`` timed ones (each ended with a
host sync: ``block_until_ready`` / the loss read back); sides alternate ``--repeats`` times
and each reports the median of its medians. One JSON line per side and a ratio line; the
machine and its load are recorded.

    python scripts/rl_throughput.py > docs/results/rl-throughput-nav2d-cpu.jsonl
    python scripts/rl_throughput.py --smoke          # tiny sizes (the test suite's run)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import jax
import numpy as np
import optax

import metajax
from metajax import rl
from metajax.app.bench import _time_calls


def jax_side(args: argparse.Namespace):
    """One meta-iteration of the compiled metajax step, ended with a host sync (a callable)."""
    env = rl.Navigation2D(horizon=args.horizon)
    learner = rl.MAMLRL(env, rl.GaussianMLPPolicy(hidden=(args.hidden,) * 2), episodes=args.episodes, inner_lr=0.1)
    task, optimizer = rl.EnvTasks(env), optax.adam(1e-3)
    state = metajax.init_state(learner, task, optimizer, jax.random.key(0))
    step = metajax.make_train_step(learner, task, optimizer, meta_batch=args.meta_batch)
    box = [state]

    def meta_iteration() -> None:
        box[0], metrics = step(box[0])
        jax.block_until_ready(metrics["loss"])

    return meta_iteration


def torch_side(args: argparse.Namespace):
    """One meta-iteration of the PyTorch task loop (a callable returning the goals' mean return)."""
    import torch

    torch.manual_seed(0)
    hidden, horizon, episodes, lr, discount = args.hidden, args.horizon, args.episodes, 0.1, 0.99
    sizes = [(2, hidden), (hidden, hidden), (hidden, 2)]
    params = []
    for fan_in, fan_out in sizes:
        w = torch.empty(fan_in, fan_out)
        torch.nn.init.xavier_uniform_(w)
        params += [w, torch.zeros(fan_out)]
    params.append(torch.zeros(2))  # log-std
    params = [p.requires_grad_() for p in params]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    rng = np.random.default_rng(0)

    def mean(p, obs):
        h = torch.tanh(obs @ p[0] + p[1])
        h = torch.tanh(h @ p[2] + p[3])
        return h @ p[4] + p[5]

    def log_prob(p, obs, actions):
        z = (actions - mean(p, obs)) * torch.exp(-p[6])
        return (-0.5 * z**2 - p[6] - 0.5 * np.log(2 * np.pi)).sum(-1)

    def rollout(p, goal):
        """A vectorised environment: ``episodes`` point robots stepped together, ``horizon`` times."""
        position = torch.zeros(episodes, 2)
        obs, acts, rews = [], [], []
        with torch.no_grad():
            for _ in range(horizon):
                action = mean(p, position) + torch.exp(p[6]) * torch.randn(episodes, 2)
                obs.append(position)
                position = position + action.clamp(-0.1, 0.1)
                acts.append(action)
                rews.append(-torch.linalg.norm(position - goal, dim=-1))
        return torch.stack(obs, 1), torch.stack(acts, 1), torch.stack(rews, 1)

    def advantages(obs, rewards):
        returns = torch.zeros_like(rewards)
        later = torch.zeros(episodes)
        for t in reversed(range(horizon)):
            later = rewards[:, t] + discount * later
            returns[:, t] = later
        o = obs.clamp(-10, 10)
        t = (torch.arange(horizon, dtype=torch.float32) / 100.0)[None, :, None].expand(episodes, horizon, 1)
        x = torch.cat([o, o**2, t, t**2, t**3, torch.ones_like(t)], -1)
        flat, y = x.reshape(-1, x.shape[-1]), returns.reshape(-1)
        coef = torch.linalg.solve(flat.T @ flat + 1e-5 * torch.eye(flat.shape[-1]), flat.T @ y)
        adv = returns - x @ coef
        return (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)

    def dice(lp, adv):
        upto = torch.cumsum(lp, -1)
        magic = lambda v: torch.exp(v - v.detach())  # noqa: E731
        return ((magic(upto) - magic(upto - lp)) * adv).mean()

    def meta_iteration() -> float:
        optimizer.zero_grad()
        total = 0.0
        for _ in range(args.meta_batch):
            goal = torch.from_numpy(rng.uniform(-0.5, 0.5, 2).astype(np.float32))
            obs, acts, rews = rollout(params, goal)
            inner = -dice(log_prob(params, obs, acts), advantages(obs, rews))
            grads = torch.autograd.grad(inner, params, create_graph=True)
            adapted = [p - lr * g for p, g in zip(params, grads, strict=True)]
            obs, acts, rews = rollout(adapted, goal)
            outer = -(log_prob(adapted, obs, acts) * advantages(obs, rews)).mean() / args.meta_batch
            outer.backward()
            total += float(rews.sum(-1).mean())
        optimizer.step()
        return total / args.meta_batch

    return meta_iteration


def main(argv: list[str] | None = None) -> int:
    """Time both sides in turns; print the JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-batch", type=int, default=20, help="goals per meta-iteration (MAML: 20)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per goal and policy (MAML: 20)")
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=100, help="width of the policy's two hidden layers")
    parser.add_argument("--steps", type=int, default=5, help="timed meta-iterations per turn")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="turns per side")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one turn (a test, not a measurement)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.meta_batch, args.episodes, args.horizon, args.hidden = 2, 2, 5, 8
        args.steps, args.warmup, args.repeats = 1, 1, 1
    for name in ("meta_batch", "episodes", "horizon", "hidden", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    import torch

    record = {k: getattr(args, k) for k in ("meta_batch", "episodes", "horizon", "hidden", "steps", "repeats")}
    env_steps = 2 * args.meta_batch * args.episodes * args.horizon  # before and after adaptation
    print(json.dumps({"kind": "machine", "platform": platform.platform(), "cpu_count": os.cpu_count(),
                      "jax": jax.__version__, "backend": jax.default_backend(), "torch": torch.__version__,
                      "torch_threads": torch.get_num_threads(), "load_avg_before": list(os.getloadavg())}))  # fmt: skip
    sides = {"metajax": jax_side(args), "torch-loop": torch_side(args)}
    for meta_iteration in sides.values():
        _time_calls(meta_iteration, args.warmup, 0)
    medians: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, meta_iteration in sides.items():
            medians[name].append(statistics.median(_time_calls(meta_iteration, 0, args.steps)))
    rates = {}
    for name, values in medians.items():
        seconds = statistics.median(values)
        rates[name] = 1.0 / seconds
        print(json.dumps({"kind": "result", "impl": name, **record, "meta_iterations_per_s": rates[name],
                          "env_steps_per_s": env_steps / seconds, "turn_medians_s": values,
                          "load_avg": list(os.getloadavg())}))  # fmt: skip
    print(json.dumps({"kind": "ratio", "metajax_over_torch_loop": rates["metajax"] / rates["torch-loop"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
