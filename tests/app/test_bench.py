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
    )
    configs = bench.configs(args)
    assert len(configs) == 2 * 2 * 2 * 2
    assert {c["meta_batch"] for c in configs} == {4, 8} and {c["remat"] for c in configs} == {False, True}
    assert all(c["workload"] == "maml-omniglot" and c["ways"] == 5 and c["impl"] == "jax" for c in configs)
    protonet = bench.configs(_args("--workload", "protonet-omniglot", "--torch"))
    assert {(c["ways"], c["impl"]) for c in protonet} == {
        (w, i) for w in (5, 20) for i in ("jax", "torch-loop", "torch-func")
    }


def test_every_embedding_learner_has_a_workload_built_from_the_registry():
    episodic = bench.configs(_args("--workload", ",".join(bench.EPISODIC), "--ways", "5", "--torch"))
    by_workload = {(c["workload"], c["impl"]) for c in episodic}
    # PyTorch references exist for ProtoNets only; the others are measured on the JAX side.
    assert by_workload == {(w, "jax") for w in bench.EPISODIC} | {("protonet-omniglot", i) for i in bench.TORCH_IMPLS}
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
        _jax(_OMNIGLOT, 300.0, 600.0),
        _jax(_OMNIGLOT, 500.0, 650.0, requested=("auto", "xla"), resolved=("map", "xla")),
        dict(_jax(_OMNIGLOT, 1000.0, 300.0), dtype="bfloat16"),
        dict(_jax(_OMNIGLOT, 900.0, 200.0), remat=True),
        _jax(_OMNIGLOT, 280.0, 610.0),
        {"kind": "error", **_OMNIGLOT, "impl": "jax", "returncode": 1, "stderr_tail": ["boom"]},
        _torch(_OMNIGLOT, "torch-loop", 120.0, 400.0),
        _torch(_OMNIGLOT, "torch-func", 75.0, 1200.0),
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
    assert bench.ratios(results) == [
        {**omniglot, "reference": "torch-loop", "speedup": 2.5, "peak_rss_delta_ratio": 1.5},
        {**omniglot, "reference": "torch-func", "speedup": 4.0, "peak_rss_delta_ratio": 0.5},
        {
            "kind": "ratio",
            **_PROTONET,
            "jax": "map/xla",
            "reference": "torch-loop",
            "speedup": 3.0,
            "peak_rss_delta_ratio": 2.0,
        },
    ]


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
