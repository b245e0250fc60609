"""scripts/perf_tables.py: tables rendered from JSON lines, and --check failing on a stale region."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from metajax.app import bench

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("perf_tables", REPO / "scripts" / "perf_tables.py")
perf_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(perf_tables)

SHAPE = dict(
    workload="maml-omniglot", image="omniglot", pool="max", filters=64, shots=1, meta_batch=32, inner_steps=1, ways=5
)


def _jax(tasks_per_s, temporaries, rss, order="second", **extra):
    return dict(
        SHAPE,
        order=order,
        kind="result",
        impl="jax",
        dtype="float32",
        remat=False,
        task_batching_requested="auto",
        conv_impl_requested="auto",
        task_batching="map",
        conv_impl="patches",
        tasks_per_s=tasks_per_s,
        xla_memory_mb={"temporaries": temporaries},
        peak_rss_delta_mb=rss,
        **extra,
    )


def _torch(impl, tasks_per_s, rss, order="second"):
    return dict(SHAPE, order=order, kind="result", impl=impl, tasks_per_s=tasks_per_s, peak_rss_delta_mb=rss)


# Two runs (each starts with its machine line): a second-order shape measured twice, a
# first-order one once, and a slower non-default JAX variant that must not be the reference.
RUNS = [
    [
        {"kind": "machine", "backend": "cpu"},
        _jax(30.0, 16.0, 610.0),
        dict(_jax(90.0, 10.0, 500.0), task_batching_requested="vmap"),
        _torch("torch-loop", 20.0, 120.0),
        _torch("torch-func", 15.0, 300.0),
        _jax(1234.5, 8.0, 400.0, order="first"),
        _torch("torch-loop", 617.25, 100.0, order="first"),
        {"kind": "ratio", "speedup": 1.5},
    ],
    [
        {"kind": "machine", "backend": "cpu"},
        _jax(33.0, 16.0, 640.0),
        _torch("torch-loop", 22.0, 130.0),
        _torch("torch-func", 11.0, 280.0),
    ],
]
EXPECTED_TORCH = (
    "| workload | metajax (tasks/s) | PyTorch task loop | torch.func vmap | vs loop | vs torch.func"
    " | XLA temporaries (MB) | peak RSS over baseline, metajax / loop (MB) |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
    "| MAML Omniglot 5w1s, second order, Conv4-64 max-pool, meta-batch 32 | 30.0-33.0 | 20.0-22.0 | 11.0-15.0"
    " | 1.50x | 2.00x-3.00x | 16.0 | 610-640 / 120-130 |\n"
    "| MAML Omniglot 5w1s, first order, Conv4-64 max-pool, meta-batch 32 | 1,234 | 617.2 | - | 2.00x | -"
    " | 8.0 | 400 / 100 |\n"
)


def _write_runs(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for run in RUNS for r in run))


def test_torch_table_from_json_lines(tmp_path):
    _write_runs(tmp_path / "docs" / "results" / "bench.jsonl")
    table = perf_tables.render({"source": "docs/results/bench.jsonl", "kind": "torch"}, tmp_path)
    assert table == EXPECTED_TORCH


def test_results_and_pivot_tables(tmp_path):
    _write_runs(tmp_path / "r.jsonl")
    results = perf_tables.render(
        {
            "source": "r.jsonl",
            "cols": "workload,tasks_per_s,xla_memory_mb.temporaries",
            "where": "impl:jax,order:first",
        },
        tmp_path,
    )
    assert results == (
        "| workload | tasks/s | XLA temporaries (MB) |\n| --- | --- | --- |\n"
        "| MAML Omniglot 5w1s, first order, Conv4-64 max-pool, meta-batch 32 | 1,234 | 8.0 |\n"
    )
    pivot = perf_tables.render(
        {"source": "r.jsonl", "kind": "pivot", "rows": "order", "cols": "impl", "value": "tasks_per_s"}, tmp_path
    )
    assert pivot.splitlines()[0] == "| order | jax (tasks/s) | torch-loop (tasks/s) | torch-func (tasks/s) |"
    assert pivot.splitlines()[2] == "| second | 30.0-90.0 | 20.0-22.0 | 11.0-15.0 |"
    assert pivot.splitlines()[3] == "| first | 1,234 | 617.2 | - |"
    with pytest.raises(perf_tables.TableError, match="does not exist"):
        perf_tables.render({"source": "missing.jsonl", "kind": "torch"}, tmp_path)
    with pytest.raises(perf_tables.TableError, match="unknown kind"):
        perf_tables.render({"source": "r.jsonl", "kind": "bars"}, tmp_path)


def test_reproduce_table_from_the_script_s_lines(tmp_path):
    lines = [
        {"protocol": "maml-omniglot-20w1s", "paper": "MAML 95.8 +- 0.3 (Finn et al. 2017, Table 1)",
         "argv": "metajax train --config c.yaml --steps 1000 --time-limit 18 --out o", "budget": "reduced",
         "steps_trained": 1234, "train_minutes": 18.04, "accuracy_percent": [5.0, 80.123, 85.456],
         "ci95_percent": [0.1, 0.5, 0.444], "commit": "29d6fb9aaaa+"},
        {"kind": "other"},  # not a protocol line: left out
        {"protocol": "protonet-omniglot-20w1s", "paper": "ProtoNets 96.0", "argv": "metajax train --out o",
         "budget": "500 steps", "steps_trained": 500, "train_minutes": 9.6, "accuracy_percent": [91.0],
         "ci95_percent": [0.25]},
    ]  # fmt: skip
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    table = perf_tables.render({"source": "r.jsonl", "kind": "reproduce"}, tmp_path).splitlines()
    assert table[0] == "| protocol | paper (%) | ours, test accuracy (%) | trained | commit | command |"
    assert table[2] == (
        "| maml-omniglot-20w1s | MAML 95.8 +- 0.3 (Finn et al. 2017, Table 1) | 85.46 +- 0.44 (2 steps; 5.00 before)"
        " | 1,234 meta-steps, 18 min | 29d6fb9+"  # + kept: that tree had uncommitted changes
        " | `python scripts/reproduce_fewshot.py --protocol maml-omniglot-20w1s --time-limit 18` |"
    )
    assert table[3] == (
        "| protonet-omniglot-20w1s | ProtoNets 96.0 | 91.00 +- 0.25 | 500 meta-steps, 10 min | -"
        " | `python scripts/reproduce_fewshot.py --protocol protonet-omniglot-20w1s --steps 500` |"
    )
    assert len(table) == 4


def test_eval_table_from_metrics_files_in_the_order_named(tmp_path):
    def metrics(algo, shots, mean, ci95, nonfinite=None):
        mse = {"mean": mean, "ci95": ci95} | ({"nonfinite": nonfinite} if nonfinite else {})
        return {"config": {"algo": algo, "shots": shots}, "train": {"steps": 70000, "seconds": 28.18},
                "eval": {"num_tasks": 600, "num_steps": len(mean) - 1, "mse": mse}}  # fmt: skip

    (tmp_path / "b.json").write_text(
        json.dumps(metrics("maml", 5, [3.0] + [0.5364] * 9 + [0.3271], [0.2] + [0.0581] * 10))
    )
    (tmp_path / "a.json").write_text(json.dumps(metrics("metasgd", 5, [3.0, 0.3884], [0.2, 0.0472], [0, 2])))
    # One task diverged by step 10: its run's mean there is null.
    diverged = metrics("fomaml", 5, [3.0, 0.6] + [None] * 9, [0.2, 0.06] + [None] * 9, [0, 0] + [1] * 9)
    (tmp_path / "c.json").write_text(json.dumps(diverged))
    # --seeds 0,1,2: the mean over seeds, null at step 10 where seed 1's was.
    seeds = metrics("maml", 10, [3.0, 0.31] + [0.2] * 8 + [None], [0.1, 0.02] + [0.01] * 8 + [None])
    seed = lambda last: [3.0, 0.31] + [0.2] * 8 + [last]  # noqa: E731
    seeds["eval"]["mse"]["per_seed"] = {"0": seed(0.1), "1": seed(None), "2": seed(0.09)}
    (tmp_path / "d.json").write_text(json.dumps(seeds))
    attrs = {"source": "b.json,a.json,c.json,d.json", "kind": "eval", "cols": "config.algo,config.shots,train.steps"}
    table = perf_tables.render({**attrs, "metric": "mse", "steps": "1,10"}, tmp_path).splitlines()
    assert table == [
        "| learner | K | meta-steps | mse after 1 step | mse after 10 steps |",
        "| --- | --- | --- | --- | --- |",
        "| maml | 5 | 70000 | 0.536 +- 0.058 | 0.327 +- 0.058 |",
        "| metasgd | 5 | 70000 | 0.388 +- 0.047 (2 of 600 tasks non-finite) | - |",  # evaluated 1 step only
        "| fomaml | 5 | 70000 | 0.600 +- 0.060 | non-finite (1 of 600 tasks non-finite) |",
        "| maml | 10 | 70000 | 0.310 +- 0.020 | non-finite (1 of 3 seeds non-finite) |",
    ]
    with pytest.raises(perf_tables.TableError, match="kind=eval needs steps"):
        perf_tables.render({**attrs, "metric": "mse"}, tmp_path)
    with pytest.raises(perf_tables.TableError, match="steps= takes adaptation steps as integers, got 'one'"):
        perf_tables.render({**attrs, "metric": "mse", "steps": "one"}, tmp_path)
    with pytest.raises(perf_tables.TableError, match="metric 'accuracy' is not in an eval of"):
        perf_tables.render({**attrs, "metric": "accuracy", "steps": "1"}, tmp_path)
    with pytest.raises(perf_tables.TableError, match="source e.json does not exist"):
        perf_tables.render({**attrs, "source": "b.json,e.json", "metric": "mse", "steps": "1"}, tmp_path)
    with pytest.raises(perf_tables.TableError, match="kind=pivot reads one source file"):
        perf_tables.render({"source": "b.json,a.json", "kind": "pivot"}, tmp_path)


def test_check_fails_on_a_stale_region_and_write_fixes_it(tmp_path, capsys):
    _write_runs(tmp_path / "docs" / "results" / "bench.jsonl")
    marker = "<!-- table:maml source=docs/results/bench.jsonl kind=torch -->"
    page = tmp_path / "perf.md"
    stale = f"# Page\n\n{marker}\n| typed | by hand |\n<!-- /table:maml -->\n\nAfter.\n"
    page.write_text(stale)
    argv = [str(page), "--root", str(tmp_path)]
    assert perf_tables.main(["--check", *argv]) == 1
    assert "stale" in capsys.readouterr().err and page.read_text() == stale  # --check writes nothing
    assert perf_tables.main(["--write", *argv]) == 0
    assert page.read_text() == f"# Page\n\n{marker}\n{EXPECTED_TORCH}<!-- /table:maml -->\n\nAfter.\n"
    assert perf_tables.main(["--check", *argv]) == 0
    # New JSON makes the committed table stale again.
    with (tmp_path / "docs" / "results" / "bench.jsonl").open("a") as f:
        f.write(json.dumps({"kind": "machine"}) + "\n" + json.dumps(_jax(99.0, 16.0, 600.0)) + "\n")
        f.write(json.dumps(_torch("torch-loop", 20.0, 120.0)) + "\n")
    assert perf_tables.main(["--check", *argv]) == 1


def test_the_committed_tables_are_up_to_date():
    assert perf_tables.main(["--check"]) == 0


def test_pairing_is_bench_s():
    assert perf_tables.SHAPE_KEYS == bench.SHAPE_KEYS and perf_tables.TORCH_IMPLS == bench.TORCH_IMPLS
    for run in RUNS:
        results = [r for r in run if r.get("kind") == "result"]
        defaults = perf_tables.jax_default(results)
        for ratio in bench.ratios(results):
            shape = tuple(ratio.get(k) for k in bench.SHAPE_KEYS)
            reference = next(r for r in results if r["impl"] == ratio["reference"] and perf_tables._shape(r) == shape)
            assert ratio["speedup"] == pytest.approx(defaults[shape]["tasks_per_s"] / reference["tasks_per_s"])
