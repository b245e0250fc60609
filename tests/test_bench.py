"""``metajax bench``: configurations, JSON records, PyTorch references (skipped without torch)."""

import argparse
import importlib.util
import json

import pytest

from metajax import bench


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
    out = tmp_path / "bench.jsonl"
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


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch (the bench extra) is not installed")
@pytest.mark.parametrize("impl", bench.TORCH_IMPLS)
def test_torch_reference_and_ratio(impl):
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
    assert record["tasks_per_s"] > 0 and record["impl"] == impl
    fake_jax = dict(
        config,
        impl="jax",
        kind="result",
        dtype="float32",
        remat=False,
        task_batching="vmap",
        task_batching_requested="auto",
        conv_impl="none",
        conv_impl_requested="none",
        tasks_per_s=2 * record["tasks_per_s"],
        peak_rss_delta_mb=1.0,
    )
    (ratio,) = bench.ratios([fake_jax, record])
    assert ratio["reference"] == impl and ratio["speedup"] == pytest.approx(2.0)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch (the bench extra) is not installed")
def test_torch_conv4_matches_the_jax_shapes():
    import torch

    from metajax import bench_torch

    x = torch.zeros(3, 1, 28, 28)
    assert bench_torch.conv4(bench_torch.conv4_params(5, features=256), x, "stride").shape == (3, 5)
    assert bench_torch.conv4(bench_torch.conv4_params(None), x, "max").shape == (3, 256)
