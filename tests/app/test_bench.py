"""``metajax bench``: configurations, JSON records, PyTorch references (skipped without torch)."""

import argparse
import importlib.util
import json

import pytest

from metajax.app import bench


def _args(*argv):
    return bench.build_parser().parse_args(list(argv))


def test_configs_sweep_the_requested_axes():
    args = _args(
        "--workload",
        "maml-omniglot",
        "--meta-batch",
        "4,8",
        "--inner-steps",
        "1,5",
        "--order",
        "second",
        "--task-batching",
        "vmap,map",
        "--remat",
        "both",
        "--pool",
        "stride",
    )
    configs = bench.configs(args)
    assert len(configs) == 2 * 2 * 2 * 2
    assert {c["meta_batch"] for c in configs} == {4, 8} and {c["remat"] for c in configs} == {False, True}
    assert all(c["workload"] == "maml-omniglot" and c["ways"] == 5 and c["impl"] == "jax" for c in configs)
    protonet = bench.configs(_args("--workload", "protonet-omniglot", "--torch"))
    assert {(c["ways"], c["impl"]) for c in protonet} == {
        (w, i) for w in (5, 20) for i in ("jax", "torch-loop", "torch-func")
    }


def test_configs_sweep_pools_images_and_shots():
    maml = bench.configs(_args("--workload", "maml-omniglot", "--order", "second", "--torch"))
    # Both Conv4 variants by default on Omniglot, each with its PyTorch references.
    assert {(c["pool"], c["impl"]) for c in maml} == {(p, i) for p in bench.POOLS for i in ("jax", *bench.TORCH_IMPLS)}
    assert {(c["image"], c["filters"], c["shots"], c["queries"], c["meta_batch"]) for c in maml} == {
        ("omniglot", 64, 1, 5, 32)
    }
    assert {c["pool"] for c in bench.configs(_args("--workload", "maml-omniglot", "--pool", "max"))} == {"max"}
    mini = bench.configs(_args("--workload", "maml-omniglot,protonet-omniglot", "--image", "miniimagenet"))
    # miniImageNet: Conv4-32 max-pooled, 5-way 1- and 5-shot, 15 queries; MAML at its paper's meta-batch and steps.
    assert {(c["workload"], c["shots"], c["ways"]) for c in mini} == {
        (w, s, 5) for w in ("maml-omniglot", "protonet-omniglot") for s in (1, 5)
    }
    assert all(c["image"] == "miniimagenet" and c["pool"] == "max" and c["filters"] == 32 for c in mini)
    assert {(c["meta_batch"], c["inner_steps"]) for c in mini if c["workload"] == "maml-omniglot"} == {(4, 5)}
    # The sinusoid has no image: one configuration whatever --image says.
    sine = bench.configs(_args("--workload", "maml-sinusoid", "--image", "omniglot,miniimagenet"))
    assert [c["image"] for c in sine] == ["none"]
    both = bench.configs(_args("--workload", "protonet-omniglot", "--image", "omniglot,miniimagenet", "--shots", "5"))
    assert {(c["image"], c["ways"], c["shots"]) for c in both} == {
        ("omniglot", 5, 5),
        ("omniglot", 20, 5),
        ("miniimagenet", 5, 5),
    }
    with pytest.raises(SystemExit):
        _args("--pool", "avg")
    with pytest.raises(SystemExit):
        _args("--image", "cifar")


def test_maml_meta_batch_sweep():
    configs = bench.configs(_args("--workload", "maml-omniglot", "--pool", "max", "--meta-batch", "8,16,32,64,128,256"))
    assert [c["meta_batch"] for c in configs if c["order"] == "second"] == [8, 16, 32, 64, 128, 256]


def test_every_embedding_learner_has_a_workload_built_from_the_registry():
    episodic = bench.configs(_args("--workload", ",".join(bench.EPISODIC), "--ways", "5", "--torch"))
    by_workload = {(c["workload"], c["impl"]) for c in episodic}
    # PyTorch references exist for ProtoNets and Matching Networks; the others are measured on the JAX side.
    assert by_workload == {(w, "jax") for w in bench.EPISODIC} | {
        (w, i) for w in ("protonet-omniglot", "matchingnet-omniglot") for i in bench.TORCH_IMPLS
    }
    for config in episodic:
        if config["impl"] == "jax":
            learner, task = bench.jax_setup(dict(config, conv_impl="auto", dtype="float32"))
            assert type(learner).__name__.lower().startswith(config["workload"][:4]) and task.ways == 5


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        _args("--workload", "maml-imagenet")
    with pytest.raises(SystemExit):
        _args("--meta-batch", "0")


def test_subcommand_parser():
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["bench", "--workload", "maml-sinusoid"]).workload == ["maml-sinusoid"]


def test_sinusoid_run_prints_json_records(capsys, tmp_path):
    out = tmp_path / "new" / "bench.jsonl"  # its folder is created
    args = _args(
        "--workload",
        "maml-sinusoid",
        "--meta-batch",
        "5",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--steps-per-call",
        "3",
        "--in-process",
        "--matmul-size",
        "128",
        "--out",
        str(out),
    )
    results = bench.run(args)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == results == [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["kind"] == "machine" and lines[0]["backend"] == "cpu"
    (record,) = lines[1:]
    assert record["kind"] == "result" and record["task_batching"] == "vmap"
    assert record["tasks_per_s"] > 0 and len(record["step_times_ms"]) == 2
    assert record["gflop_per_step"] > 0 and 0 < record["share_of_matmul_peak"]
    assert record["xla_memory_mb"]["arguments"] > 0
    # In-process, the peak resident memory is this configuration's own (the kernel's counter is reset).
    assert record["peak_rss_scope"] == "config" and record["peak_rss_mb"] >= record["rss_setup_mb"]
    assert record["device_memory_mb"] is None  # the CPU backend reports no device memory


_OMNIGLOT = dict(workload="maml-omniglot", meta_batch=32, inner_steps=1, ways=5, order="second")
_PROTONET = dict(workload="protonet-omniglot", meta_batch=1, inner_steps=0, ways=20, order="none")


def _jax(shape, tasks_per_s, rss, requested=("auto", "auto"), resolved=("map", "patches"), **extra):
    return dict(
        shape,
        kind="result",
        impl="jax",
        dtype="float32",
        remat=False,
        task_batching_requested=requested[0],
        conv_impl_requested=requested[1],
        task_batching=resolved[0],
        conv_impl=resolved[1],
        tasks_per_s=tasks_per_s,
        peak_rss_delta_mb=rss,
        **extra,
    )


def _torch(shape, impl, tasks_per_s, rss):
    return dict(shape, kind="result", impl=impl, tasks_per_s=tasks_per_s, peak_rss_delta_mb=rss)


def test_ratios_against_the_library_default_configuration():
    results = [
        {"kind": "machine", "backend": "cpu"},
        # maml-omniglot, meta-batch 32: the library default (auto/auto, resolved to map/patches) runs 300
        # tasks/s; a faster non-default task batching measured first, slower auto runs, a faster
        # non-default conv, and faster bfloat16 and remat runs of the default must not become the reference.
        _jax(_OMNIGLOT, 450.0, 900.0, requested=("vmap", "auto"), resolved=("vmap", "patches")),
        _jax(_OMNIGLOT, 250.0, 700.0),
        _jax(_OMNIGLOT, 300.0, 600.0, xla_memory_mb={"temporaries": 16.0}, peak_rss_mb=1600.0),
        _jax(_OMNIGLOT, 500.0, 650.0, requested=("auto", "xla"), resolved=("map", "xla")),
        dict(_jax(_OMNIGLOT, 1000.0, 300.0), dtype="bfloat16"),
        dict(_jax(_OMNIGLOT, 900.0, 200.0), remat=True),
        _jax(_OMNIGLOT, 280.0, 610.0),
        {"kind": "error", **_OMNIGLOT, "impl": "jax", "returncode": 1, "stderr_tail": ["boom"]},
        dict(_torch(_OMNIGLOT, "torch-loop", 120.0, 400.0), peak_rss_mb=900.0),
        dict(_torch(_OMNIGLOT, "torch-func", 75.0, 1200.0), peak_rss_mb=1700.0),
        # The same workload at meta-batch 8 and in first order: JAX ran neither shape, so no ratio.
        _torch(dict(_OMNIGLOT, meta_batch=8), "torch-loop", 50.0, 100.0),
        _torch(dict(_OMNIGLOT, order="first"), "torch-func", 60.0, 100.0),
        # ProtoNet 20-way: no library-default run was measured, so the fastest non-default one is used.
        _jax(_PROTONET, 40.0, 250.0, requested=("vmap", "xla"), resolved=("vmap", "xla")),
        _jax(_PROTONET, 60.0, 300.0, requested=("map", "xla"), resolved=("map", "xla")),
        _torch(_PROTONET, "torch-loop", 20.0, 150.0),
        _torch(dict(_PROTONET, ways=5), "torch-loop", 10.0, 150.0),  # no JAX 5-way run
    ]
    omniglot = {"kind": "ratio", **_OMNIGLOT, "jax": "map/patches"}
    jax_memory = {"jax_xla_temporaries_mb": 16.0, "jax_peak_rss_mb": 1600.0, "jax_peak_rss_delta_mb": 600.0}
    assert bench.ratios(results) == [
        {
            **omniglot,
            "reference": "torch-loop",
            "speedup": 2.5,
            "peak_rss_delta_ratio": 1.5,
            **jax_memory,
            "reference_peak_rss_mb": 900.0,
            "reference_peak_rss_delta_mb": 400.0,
        },
        {
            **omniglot,
            "reference": "torch-func",
            "speedup": 4.0,
            "peak_rss_delta_ratio": 0.5,
            **jax_memory,
            "reference_peak_rss_mb": 1700.0,
            "reference_peak_rss_delta_mb": 1200.0,
        },
        {
            "kind": "ratio",
            **_PROTONET,
            "jax": "map/xla",
            "reference": "torch-loop",
            "speedup": 3.0,
            "peak_rss_delta_ratio": 2.0,
            "jax_xla_temporaries_mb": None,
            "jax_peak_rss_mb": None,
            "jax_peak_rss_delta_mb": 300.0,
            "reference_peak_rss_mb": None,
            "reference_peak_rss_delta_mb": 150.0,
        },
    ]
    # The Conv4 variant is part of the shape: a max-pool reference is not compared with a stride JAX run.
    max_pool = _torch(dict(_OMNIGLOT, pool="max"), "torch-loop", 100.0, 400.0)
    assert bench.ratios([_jax(dict(_OMNIGLOT, pool="stride"), 300.0, 600.0), max_pool]) == []
    (ratio,) = bench.ratios([_jax(dict(_OMNIGLOT, pool="max"), 300.0, 600.0), max_pool])
    assert ratio["pool"] == "max" and ratio["speedup"] == 3.0


def test_ratios_prefer_any_measured_default_and_need_a_float32_jax_run():
    # The default of a workload without convolutions has conv_impl_requested "none".
    sine = dict(workload="maml-sinusoid", meta_batch=25, inner_steps=1, ways=1, order="second")
    default = _jax(sine, 800.0, 50.0, requested=("auto", "none"), resolved=("vmap", "none"))
    faster = _jax(sine, 1600.0, 50.0, requested=("map", "none"), resolved=("map", "none"))
    torch_loop = _torch(sine, "torch-loop", 200.0, 25.0)
    for order in ([default, faster, torch_loop], [faster, default, torch_loop], [torch_loop, faster, default]):
        (ratio,) = bench.ratios(order)
        assert ratio["jax"] == "vmap/none" and ratio["speedup"] == 4.0 and ratio["peak_rss_delta_ratio"] == 2.0
    # Only bfloat16 or remat JAX runs: nothing to compare with.
    assert bench.ratios([dict(default, dtype="bfloat16"), dict(faster, remat=True), torch_loop]) == []
    assert bench.ratios([default, faster]) == []


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch (the bench extra) is not installed")
@pytest.mark.parametrize("impl", bench.TORCH_IMPLS)
def test_torch_reference_record_is_paired_with_jax(impl):
    config = dict(
        workload="maml-sinusoid",
        meta_batch=4,
        inner_steps=1,
        ways=1,
        order="second",
        steps=2,
        warmup=0,
        impl=impl,
        steps_per_call=1,
        matmul_size=128,
    )
    record = bench.run_torch(config)
    assert record["kind"] == "result" and record["impl"] == impl
    assert record["tasks_per_s"] > 0 and len(record["step_times_ms"]) == 2 and record["gflop_per_step"] > 0
    fake_jax = _jax(
        {k: config[k] for k in ("workload", "meta_batch", "inner_steps", "ways", "order")},
        300.0,
        1.0,
        requested=("auto", "none"),
        resolved=("vmap", "none"),
    )
    other_shape = dict(fake_jax, meta_batch=8, tasks_per_s=1e9)
    (ratio,) = bench.ratios([other_shape, fake_jax, record])
    assert (ratio["reference"], ratio["meta_batch"], ratio["jax"]) == (impl, 4, "vmap/none")
    assert ratio["speedup"] > 0 and ratio["peak_rss_delta_ratio"] > 0


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch (the bench extra) is not installed")
def test_torch_conv4_matches_the_jax_shapes():
    import torch

    from metajax.app import bench_torch

    x = torch.zeros(3, 1, 28, 28)
    assert bench_torch.conv4(bench_torch.conv4_params(5, features=256), x, "stride").shape == (3, 5)
    assert bench_torch.conv4(bench_torch.conv4_params(None), x, "max").shape == (3, 256)
    mini = torch.zeros(2, 3, 84, 84)
    assert bench_torch.conv4(bench_torch.conv4_params(5, 32, 3, 32 * 6 * 6), mini, "max").shape == (2, 5)


def _to_torch(params: dict, ways: int | None = None, side: int = 0):
    """JAX Conv4 parameters as bench_torch.conv4's list (the classifier's rows reordered from NHWC to NCHW)."""
    import numpy as np
    import torch

    out = []
    for i in range(4):
        conv, bn = params[f"Conv_{i}"], params[f"BatchStatNorm_{i}"]
        out += [np.transpose(conv["kernel"], (3, 2, 0, 1)), conv["bias"], bn["scale"], bn["bias"]]
    if ways is not None:
        kernel = np.asarray(params["Dense_0"]["kernel"])
        c = kernel.shape[0] // (side * side)
        out += [
            kernel.reshape(side, side, c, ways).transpose(2, 0, 1, 3).reshape(-1, ways).T,
            params["Dense_0"]["bias"],
        ]
    return [torch.tensor(np.array(a)) for a in out]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch (the bench extra) is not installed")
@pytest.mark.parametrize("image", bench.IMAGES)
def test_torch_references_compute_the_jax_networks_and_losses(image):
    """The PyTorch Conv4 (both variants) and the ProtoNet and Matching Networks losses equal the JAX ones."""
    import jax
    import numpy as np
    import torch

    from metajax import models
    from metajax.app import bench_torch
    from metajax.training import first_episode

    tol = dict(rtol=2e-4, atol=2e-5)
    shape = dict(image=image, filters=4, shots=2, queries=2, ways=3, meta_batch=1, inner_steps=0, order="none")
    common = dict(shape, conv_impl="xla", dtype="float32", remat=False)
    sizes = bench.shape_of(dict(common, workload="maml-omniglot"))
    side = -(-sizes["size"] // 16)
    assert sizes["features"] == 4 * side * side
    for workload in ("protonet-omniglot", "matchingnet-omniglot"):
        learner, task = bench.jax_setup(dict(common, workload=workload, pool="max"))
        episode = first_episode(task, jax.random.key(0))
        params = learner.init(jax.random.key(1), episode)
        embed = params.get("embed", params)
        data = [np.asarray(episode.support_x), np.asarray(episode.support_y)]
        data += [np.asarray(episode.query_x), np.asarray(episode.query_y)]
        sx, qx = (torch.tensor(np.moveaxis(a, -1, -3)) for a in data[::2])
        sy, qy = (torch.tensor(a).long() for a in data[1::2])
        loss = {"protonet-omniglot": bench_torch.protonet_loss, "matchingnet-omniglot": bench_torch.matchingnet_loss}
        got = loss[workload](_to_torch(embed), 3, sx, sy, qx, qy)
        want = learner.loss(params, episode, jax.random.key(2))[0]
        np.testing.assert_allclose(got.item(), float(want), **tol)
    # MAML's Conv4 with its classifier, in both variants.
    x = jax.random.uniform(jax.random.key(3), (3, sizes["size"], sizes["size"], sizes["channels"]))
    for pool in bench.POOLS:
        net = models.Conv4(filters=4, out=3, pool=pool, impl="xla")
        params = net.init(jax.random.key(4), x)["params"]
        got = bench_torch.conv4(_to_torch(params, 3, side), torch.tensor(np.moveaxis(np.asarray(x), -1, -3)), pool)
        np.testing.assert_allclose(got.detach().numpy(), np.asarray(net.apply({"params": params}, x)), **tol)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch (the bench extra) is not installed")
@pytest.mark.parametrize("impl", bench.TORCH_IMPLS)
def test_torch_steps_of_the_new_workloads_run_and_update(impl):
    """One meta-step of each new reference (max-pool MAML, Matching Networks, 84x84x3 inputs) changes the weights."""
    import jax
    import torch

    from metajax.app import bench_torch

    shapes = [
        dict(workload="maml-omniglot", image="omniglot", pool="max", shots=1, inner_steps=1, order="second"),
        dict(workload="matchingnet-omniglot", image="omniglot", pool="max", shots=1, inner_steps=0, order="none"),
        dict(workload="protonet-omniglot", image="miniimagenet", pool="max", shots=2, inner_steps=0, order="none"),
    ]
    for shape in shapes:
        config = dict(shape, impl=impl, filters=2, queries=1, ways=3, meta_batch=2, conv_impl="xla", dtype="float32")
        _, task = bench.jax_setup(dict(config, remat=False))
        batch = jax.device_get(task.sample(jax.random.key(0), 2))
        torch.manual_seed(0)
        step = bench_torch._make_step(config, batch, bench.shape_of(config))
        before = [p.detach().clone() for p in step.params]
        step()
        after = [p.detach() for p in step.params]
        assert before and any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)), shape
