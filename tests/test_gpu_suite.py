"""scripts/gpu_suite.sh, checked without a GPU and without running its heavy parts.

A stand-in Python interpreter (``GPU_SUITE_PYTHON``) answers the suite's ``metajax bench``
and ``reproduce_fewshot.py`` commands at once (succeeding, failing or hanging as a test
asks) and records their arguments; the arguments are then parsed by the real parsers, so a
flag that ``bench`` or ``reproduce_fewshot.py`` would refuse on the GPU machine fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import cache_of
from metajax.app import bench, cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_suite.sh"
PARTS = [
    "bench-maml-omniglot",
    "bench-maml-sinusoid",
    "bench-episodic",
    "bench-miniimagenet",
    "fewshot-snail-omniglot-5w1s",
    "bench-bf16",
    "fewshot-snail-omniglot-20w1s",
    "fewshot-maml-omniglot-5w1s",
    "bench-maml-omniglot-first",
]

FAKE_PYTHON = textwrap.dedent(
    """\
    #!{python}
    # Stands in for Python in the suite: bench and reproduce_fewshot.py commands are answered at
    # once; everything else (the suite's probes and helpers) runs on the real interpreter.
    import json, os, sys, time
    argv = sys.argv[1:]
    if argv[:3] == ["-m", "metajax.app.cli", "bench"]:
        kind = "bench"
    elif argv[:1] and argv[0].endswith("reproduce_fewshot.py"):
        kind = "fewshot"
    else:
        os.execv(sys.executable, [sys.executable, *argv])
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({{"kind": kind, "argv": argv}}) + "\\n")
    text = " ".join(argv)
    if any(s and s in text for s in os.environ.get("FAKE_FAIL", "").split(",")):
        sys.exit(3)
    hang = any(s and s in text for s in os.environ.get("FAKE_HANG", "").split(","))
    if kind == "bench":
        out = argv[argv.index("--out") + 1]
        shape = dict(workload="maml-omniglot", meta_batch=32, inner_steps=1, ways=5, order="second")
        jax_line = dict(shape, kind="result", impl="jax", dtype="float32", remat=False, task_batching="vmap",
                        conv_impl="xla", task_batching_requested="auto", conv_impl_requested="auto",
                        tasks_per_s=300.0, peak_rss_delta_mb=10.0)
        lines = [{{"kind": "machine"}}, jax_line]
        if "--torch" in argv:
            lines.append(dict(shape, kind="result", impl="torch-loop", tasks_per_s=100.0, peak_rss_delta_mb=5.0))
        if not hang:
            lines.append({{"kind": "ratio", "speedup": 3.0}})
        with open(out, "a") as f:
            f.writelines(json.dumps(r) + "\\n" for r in lines)
    else:
        protocol = argv[argv.index("--protocol") + 1]
        run = os.path.join(argv[argv.index("--out") + 1], protocol)
        os.makedirs(run, exist_ok=True)
        with open(os.path.join(run, "log.jsonl"), "w") as f:
            f.write(json.dumps({{"step": 100, "loss": 1.5}}) + "\\n")
        if not hang:
            print(json.dumps({{"protocol": protocol, "stand_in": True}}), flush=True)
    if hang:
        time.sleep(120)
    """
)


def _fake_repo(tmp_path: Path) -> Path:
    """A folder shaped like the repository (the script and src/), without ./data."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "scripts" / "gpu_suite.sh")
    (root / "src").symlink_to(REPO / "src")
    return root


def _fake_data(tmp_path: Path) -> Path:
    data = tmp_path / "data-root"
    (data / "omniglot" / "splits" / "vinyals").mkdir(parents=True)
    for name in ("images_background.zip", "images_evaluation.zip"):
        (data / "omniglot" / name).write_bytes(b"zip")
    for name in ("train.txt", "val.txt", "test.txt", "trainval.txt"):
        (data / "omniglot" / "splits" / "vinyals" / name).write_text("Latin/character01/rot000\n")
    return data


def _suite(root: Path, *args: str, env: dict | None = None, timeout: float = 50) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("OUT", "METAJAX_DATA", "METAJAX_CACHE")}
    full_env.update(env or {})
    return subprocess.run(
        ["bash", str(root / "scripts" / "gpu_suite.sh"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def _stand_in(tmp_path: Path) -> dict:
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    return {"GPU_SUITE_PYTHON": str(python), "FAKE_LOG": str(tmp_path / "calls.jsonl")}


def _parts(summary: dict) -> dict:
    return {p["name"]: p for p in summary["parts"]}


def test_the_script_parses_and_documents_itself():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    shown = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for word in ["--smoke", "--out", "--prepare-data", 'carry=["data"]', "timeout_s 600", "docs/results/gpu/", *PARTS]:
        assert word in shown


def test_the_limits_fit_the_device_command():
    listed = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True, check=True).stdout
    limits = dict(re.findall(r"^(\S+)\s+(\d+) s  needs", listed, flags=re.M))
    assert list(limits) == PARTS  # in order of value
    budget = int(re.search(r"^budget (\d+) s", listed, flags=re.M).group(1))
    # 8 minutes, a margin inside the device's 10 minutes a command (each part may take 10 s more to be killed).
    assert budget <= 480
    assert all(0 < int(v) <= budget for v in limits.values())
    # The four throughput parts and the SNAIL 5w1s protocol fit together; the others only if time is left.
    assert sum(int(limits[p]) for p in PARTS[:5]) <= budget < sum(int(v) for v in limits.values())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unknown argument"),
        (["--only", "bench-nothing"], "unknown part"),
        (["--scale", "0"], "--scale"),
        (["--torch", "maybe"], "--torch"),
        (["--out"], "needs a value"),
    ],
)
def test_bad_arguments_are_refused(args, message):
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr


def test_every_outcome_is_recorded_and_the_suite_goes_on(tmp_path):
    root, out = _fake_repo(tmp_path), tmp_path / "out"
    env = _stand_in(tmp_path) | {
        "METAJAX_DATA": str(_fake_data(tmp_path)),
        "FAKE_FAIL": "maml-sinusoid",
        "FAKE_HANG": "transformer-omniglot,snail-omniglot-20w1s",
    }
    # Full-size commands, limits scaled down a hundredfold (hanging parts stop after about 1 s).
    result = _suite(root, "--out", str(out), "--scale", "0.01", "--budget", "50000", "--torch", "on", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "complete" and summary["mode"] == "full"
    parts = _parts(summary)
    assert list(parts) == PARTS
    status = {name: p["status"] for name, p in parts.items()}
    assert status == {
        "bench-maml-omniglot": "ok",
        "bench-maml-sinusoid": "failed",
        "bench-episodic": "timeout",
        "bench-miniimagenet": "ok",
        "bench-bf16": "ok",
        "fewshot-snail-omniglot-5w1s": "ok",
        "fewshot-snail-omniglot-20w1s": "timeout",
        "fewshot-maml-omniglot-5w1s": "ok",
        "bench-maml-omniglot-first": "ok",
    }
    assert parts["bench-maml-sinusoid"]["exit_code"] == 3
    assert all(isinstance(p["wall_s"], float) and p["limit_s"] > 0 for p in parts.values())
    # A part stopped early keeps its lines, and gets the ratio lines bench did not print.
    episodic = [json.loads(line) for line in (out / "bench-episodic.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in episodic] == ["machine", "result", "result", "ratio"]
    assert episodic[-1]["speedup"] == pytest.approx(3.0) and "recomputed" in episodic[-1]
    assert parts["bench-episodic"]["ratios"] == 1 and parts["bench-maml-omniglot"]["results"] == 2
    # The first-order part appends its run to the second-order part's file and counts only its own lines.
    maml_runs = (out / "bench-maml-omniglot.jsonl").read_text().count('"kind": "machine"')
    assert maml_runs == 2 and parts["bench-maml-omniglot-first"]["file"] == "bench-maml-omniglot.jsonl"
    assert parts["bench-maml-omniglot-first"]["results"] == 2 and parts["bench-maml-omniglot-first"]["lines"] == 4
    assert parts["fewshot-snail-omniglot-20w1s"]["last_train_log"] == {"step": 100, "loss": 1.5}
    protocols = [json.loads(line)["protocol"] for line in (out / "fewshot.jsonl").read_text().splitlines()]
    assert protocols == ["snail-omniglot-5w1s", "maml-omniglot-5w1s"]
    # What the device returns from $OUT: at most 8 files, plainly named.
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
    assert "summary.json" in files and "suite.log" in files
    _check_commands(tmp_path / "calls.jsonl", out)


def _check_commands(calls: Path, out: Path) -> None:
    """The recorded commands, parsed by bench's and reproduce_fewshot.py's own parsers."""
    spec = importlib.util.spec_from_file_location("reproduce_fewshot", REPO / "scripts" / "reproduce_fewshot.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    seen = {}
    for call in map(json.loads, calls.read_text().splitlines()):
        argv = call["argv"]
        if call["kind"] == "bench":
            args = bench.build_parser().parse_args(argv[3:])
            assert args.in_process and Path(args.out).parent == out
            seen.setdefault(Path(args.out).stem, (args, bench.configs(args)))  # the first run of a file
        else:
            train_argv = []

            def fake_train(train_args, train_argv=train_argv):
                train_argv.append(train_args)
                return {
                    "eval": {"accuracy": {"mean": [0.5], "ci95": [0.1]}, "num_tasks": train_args.eval_tasks},
                    "train": {"steps": 1, "seconds": 1.0},
                    "machine": {},
                }

            original, cli.train_command = cli.train_command, fake_train
            try:
                assert reproduce.main(argv[1:]) == 0
            finally:
                cli.train_command = original
            (train_args,) = train_argv
            assert train_args.time_limit > 0 and train_args.eval_tasks == 1000  # the paper's test episodes
            seen[train_args.out.name] = (train_args, None)
    args, configs = seen["bench-maml-omniglot"]
    assert args.meta_batch == [32, 128, 512] and args.order == ["second"] and args.torch
    assert {c["impl"] for c in configs} == {"jax", "torch-loop", "torch-func"} and len(configs) == 18
    assert {c["pool"] for c in configs} == {"stride", "max"}  # both Conv4 variants
    args, configs = seen["bench-miniimagenet"]
    assert args.image == ["miniimagenet"] and args.torch
    assert {(c["workload"], c["shots"], c["ways"], c["filters"]) for c in configs} == {
        (w, s, 5, 32) for w in ("maml-omniglot", "protonet-omniglot") for s in (1, 5)
    }
    args, configs = seen["bench-episodic"]
    assert {c["workload"] for c in configs} == set(bench.EPISODIC) and {c["ways"] for c in configs} == {5, 20}
    assert {c["workload"] for c in configs if c["impl"] != "jax"} == {"protonet-omniglot", "matchingnet-omniglot"}
    args, configs = seen["bench-bf16"]
    assert args.dtype == ["float32", "bfloat16"] and not args.torch
    assert {"snail-omniglot-5w1s", "snail-omniglot-20w1s", "maml-omniglot-5w1s"} <= set(seen)


def test_parts_without_data_or_time_are_skipped_with_the_reason(tmp_path):
    root, out = _fake_repo(tmp_path), tmp_path / "out"
    env = _stand_in(tmp_path) | {"METAJAX_DATA": str(tmp_path / "empty")}
    result = _suite(root, "--smoke", "--out", str(out), "--budget", "1", "--torch", "off", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    parts = _parts(summary)
    assert summary["mode"] == "smoke" and {p["status"] for p in parts.values()} == {"skipped"}
    assert "no Omniglot data" in parts["fewshot-snail-omniglot-5w1s"]["reason"]
    assert "images_background.zip" in parts["fewshot-snail-omniglot-5w1s"]["reason"]
    assert "exceeds" in parts["bench-maml-omniglot"]["reason"]
    assert not (tmp_path / "calls.jsonl").exists()  # nothing ran
    # --only: the others are recorded as not selected; the chosen one runs, with smoke sizes.
    result = _suite(root, "--smoke", "--out", str(out), "--only", "bench-bf16", "--torch", "off", env=env)
    parts = _parts(json.loads((out / "summary.json").read_text()))
    assert parts["bench-bf16"]["status"] == "ok", result.stderr
    assert all("--only" in p["reason"] for name, p in parts.items() if name != "bench-bf16")
    (call,) = map(json.loads, (tmp_path / "calls.jsonl").read_text().splitlines())
    args = bench.build_parser().parse_args(call["argv"][3:])
    assert (args.steps, args.warmup, args.meta_batch, args.dtype) == (1, 0, [2], ["bfloat16"])


def test_prepare_data_copies_omniglot_into_an_ignored_folder(tmp_path):
    root = _fake_repo(tmp_path)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    cache, source = tmp_path / "cache", _fake_data(tmp_path)
    cache_of(cache, "omniglot", source).mkdir(parents=True)  # the loader's cache of that data root
    (cache_of(cache, "omniglot", source) / "background_28px.npz").write_bytes(b"npz")
    result = _suite(root, "--prepare-data", str(source), env={"METAJAX_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    data = root / "data"
    assert (data / "omniglot" / "images_background.zip").read_bytes() == b"zip"
    assert (data / "omniglot" / "splits" / "vinyals" / "test.txt").is_file()
    assert (data / "cache" / "omniglot" / "background_28px.npz").is_file()
    # The suite files it under its own data root, where the loader looks on the device.
    result = _suite(root, "--smoke", "--out", str(tmp_path / "out"), "--only", "bench-bf16", env=_stand_in(tmp_path))
    assert (cache_of(data / "cache", "omniglot", data) / "background_28px.npz").read_bytes() == b"npz", result.stderr
    subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "data/omniglot/images_background.zip"], check=True)
    # A source without the files is refused, naming what is missing.
    (tmp_path / "empty-src").mkdir()
    result = _suite(root, "--prepare-data", str(tmp_path / "empty-src"))
    assert result.returncode == 2 and "lacks images_background.zip" in result.stderr
