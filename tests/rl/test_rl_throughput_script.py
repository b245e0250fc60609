"""``scripts/rl_throughput.py --smoke``: both sides run the MAML-RL meta-iteration and report their rates."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the PyTorch side (the bench extra)
spec = importlib.util.spec_from_file_location(
    "rl_throughput", Path(__file__).parents[2] / "scripts" / "rl_throughput.py"
)
rl_throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rl_throughput)


def test_smoke_run_reports_both_sides_and_their_ratio(capsys):
    assert rl_throughput.main(["--smoke"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["kind"] for line in lines] == ["machine", "result", "result", "ratio"]
    results = {line["impl"]: line for line in lines if line["kind"] == "result"}
    assert set(results) == {"metajax", "torch-loop"}
    for line in results.values():
        # Environment steps per meta-iteration: 2 rollouts x 2 goals x 2 episodes x 5 steps.
        assert line["env_steps_per_s"] == pytest.approx(40 * line["meta_iterations_per_s"])
    ratio = results["metajax"]["meta_iterations_per_s"] / results["torch-loop"]["meta_iterations_per_s"]
    assert lines[-1]["metajax_over_torch_loop"] == pytest.approx(ratio)
