"""PyTorch references of the benchmark workloads (imported only by ``metajax bench --torch``).

Two formulations of each meta-step, both with Adam on the meta-parameters:

* ``torch-loop``: the learn2learn pattern: for each task, clone the parameters, take the
  inner steps with ``torch.autograd.grad(create_graph=second_order)``, backpropagate the
  query loss (scaled by ``1 / tasks``) into the meta-parameters; one optimizer step.
* ``torch-func``: ``torch.func.grad`` of the mean over ``torch.func.vmap`` of the per-task
  query loss, whose inner steps are ``torch.func.grad`` too.

The networks are those of the JAX workloads: MLP 1-40-40-1; Conv4 with 3x3 convolutions,
batch normalisation with the batch's statistics (no running averages), ReLU, and stride 2
(padded as XLA's ``SAME``) or 2x2 max-pooling (``SAME``: odd sides rounded up), with the
configuration's filters and input channels (Conv4-64 on 28x28x1, Conv4-32 on 84x84x3).
MAML uses either variant (``pool``); ProtoNets and Matching Networks the max-pooled one.
Matching Networks are the registry's default learner: cosine attention of each query over
the support embeddings (no full-context embeddings, temperature 1), and the queries'
negative log-likelihood ``-log(P(y | x, S) + 1e-8)``.

Parameters and data live on :data:`DEVICE` (CUDA when PyTorch sees a GPU, else the CPU);
on CUDA each step ends with ``torch.cuda.synchronize()`` so that its time is the work's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _same_pads(size: int, stride: int, kernel: int = 3) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv4_params(ways: int | None, filters: int = 64, channels: int = 1, features: int = 0) -> list[torch.Tensor]:
    """``[w, b, scale, bias] * 4`` (+ ``[W, b]`` of the classifier when ``ways``)."""
    params = []
    for i in range(4):
        w = torch.empty(filters, channels if i == 0 else filters, 3, 3)
        torch.nn.init.kaiming_uniform_(w, a=5**0.5)
        params += [w, torch.zeros(filters), torch.ones(filters), torch.zeros(filters)]
    if ways is not None:
        w = torch.empty(ways, features)
        torch.nn.init.kaiming_uniform_(w, a=5**0.5)
        params += [w, torch.zeros(ways)]
    return [p.to(DEVICE).requires_grad_() for p in params]


def conv4(params, x: torch.Tensor, pool: str) -> torch.Tensor:
    """``x [N, C, H, W]`` -> logits ``[N, ways]`` or embeddings ``[N, D]``."""
    for i in range(4):
        w, b, g, beta = params[4 * i : 4 * i + 4]
        if pool == "stride":
            (top, bottom), (left, right) = _same_pads(x.shape[-2], 2), _same_pads(x.shape[-1], 2)
            x = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=2)
        else:
            x = F.conv2d(x, w, b, padding=1)
        x = F.relu(F.batch_norm(x, None, None, g, beta, training=True, eps=1e-5))
        if pool == "max":
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = x.flatten(1)
    if len(params) > 16:
        x = F.linear(x, params[16], params[17])
    return x


def mlp_params() -> list[torch.Tensor]:
    """MLP 1-40-40-1."""
    layers = [torch.nn.Linear(1, 40), torch.nn.Linear(40, 40), torch.nn.Linear(40, 1)]
    return [p.detach().clone().to(DEVICE).requires_grad_() for layer in layers for p in (layer.weight, layer.bias)]


def mlp(params, x: torch.Tensor) -> torch.Tensor:
    """``x [N, 1]`` -> ``[N, 1]``."""
    w1, b1, w2, b2, w3, b3 = params
    return F.linear(F.relu(F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)), w3, b3)


def make_step(config: dict, batch, shape: dict):
    """A no-argument function running one meta-step of ``config`` on a fixed ``batch`` (Episode of numpy arrays).

    ``shape`` holds the Conv4 and episode sizes of ``config`` (``metajax.app.bench.shape_of``,
    passed in so that this module does not import the benchmark driver that imports it).
    On CUDA the function returns after the step's kernels have finished.
    """
    step = _make_step(config, batch, shape)
    if DEVICE.type != "cuda":
        return step

    def synchronized():
        step()
        torch.cuda.synchronize()

    return synchronized


def _tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a)).to(DEVICE)


def _make_step(config: dict, batch, shape: dict):
    workload, impl = config["workload"], config["impl"]
    as_images = lambda a: _tensor(np.moveaxis(np.asarray(a), -1, -3))
    net: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]
    loss_fn: Callable[..., torch.Tensor]
    if workload == "maml-sinusoid":
        sx, sy, qx, qy = (_tensor(a) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
        params, net, loss_fn = mlp_params(), mlp, F.mse_loss
        lr, second = 0.01, True
    else:
        sx, qx = as_images(batch.support_x), as_images(batch.query_x)
        sy, qy = (_tensor(a).long() for a in (batch.support_y, batch.query_y))
        loss_fn = F.cross_entropy
        if workload == "maml-omniglot":
            params = conv4_params(config["ways"], shape["filters"], shape["channels"], shape["features"])
            net = lambda p, x: conv4(p, x, shape["pool"])
            lr, second = shape["inner_lr"], config["order"] == "second"
        else:
            params = conv4_params(None, shape["filters"], shape["channels"])
            losses = {"protonet-omniglot": protonet_loss, "matchingnet-omniglot": matchingnet_loss}
            if workload not in losses:
                raise ValueError(f"no PyTorch reference of {workload!r}")
            metric_loss = lambda p, *data: losses[workload](p, config["ways"], *data)
            optimizer = torch.optim.Adam(params, lr=1e-3)
            return _outer_step(metric_loss, params, (sx, sy, qx, qy), optimizer, impl)
    optimizer = torch.optim.Adam(params, lr=1e-3)
    steps = config["inner_steps"]

    def task_loss(p, sx, sy, qx, qy):
        for _ in range(steps):
            if impl == "torch-loop":
                g = torch.autograd.grad(loss_fn(net(p, sx), sy), p, create_graph=second)
            else:
                g = grad(lambda p: loss_fn(net(p, sx), sy))(p)
                if not second:
                    g = [gi.detach() for gi in g]
            p = [pi - lr * gi for pi, gi in zip(p, g, strict=True)]
        return loss_fn(net(p, qx), qy)

    return _outer_step(task_loss, params, (sx, sy, qx, qy), optimizer, impl)


def protonet_loss(p, ways: int, sx, sy, qx, qy) -> torch.Tensor:
    """Prototypical Networks' query loss of one task (support and queries embedded as separate batches)."""
    support, queries = conv4(p, sx, "max"), conv4(p, qx, "max")
    one_hot = F.one_hot(sy, ways).to(support.dtype)
    prototypes = one_hot.T @ support / one_hot.sum(0).clamp(min=1.0)[:, None]
    logits = -((queries[:, None, :] - prototypes[None]) ** 2).sum(-1)
    return F.cross_entropy(logits, qy)


def matchingnet_loss(p, ways: int, sx, sy, qx, qy) -> torch.Tensor:
    """Matching Networks' query negative log-likelihood of one task, as ``metajax.MatchingNet(fce=False)``."""
    g, f = conv4(p, sx, "max"), conv4(p, qx, "max")
    g = g / g.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    f = f / f.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    attention = torch.softmax(f @ g.T, dim=-1)
    probabilities = attention @ F.one_hot(sy, ways).to(g.dtype)
    log_probabilities = torch.log(probabilities + 1e-8)
    return -log_probabilities.gather(1, qy[:, None]).mean()


def _outer_step(task_loss, params, data, optimizer, impl: str):
    """One Adam step on the mean of ``task_loss`` over the tasks: a Python loop or ``torch.func.vmap``."""
    sx, sy, qx, qy = data
    tasks = sx.shape[0]
    if impl == "torch-loop":

        def step():
            optimizer.zero_grad()
            for t in range(tasks):
                (task_loss(params, sx[t], sy[t], qx[t], qy[t]) / tasks).backward()
            optimizer.step()

        step.params = params  # type: ignore[attr-defined]  # for tests: the meta-parameters the step updates
        return step

    def batch_loss(p):
        return vmap(task_loss, in_dims=(None, 0, 0, 0, 0), randomness="same")(p, sx, sy, qx, qy).mean()

    def func_step():
        grads = grad(batch_loss)([p.detach() for p in params])
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()

    func_step.params = params  # type: ignore[attr-defined]
    return func_step
