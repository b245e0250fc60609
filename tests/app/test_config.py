"""``metajax train --config FILE``: a protocol's flags from YAML, overridden by the command line."""

from pathlib import Path

import pytest

from metajax.app import cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _parse(*argv: str):
    return cli.parse(["train", *argv, "--out", "run"])


def test_every_protocol_config_is_a_valid_train_command_citing_its_paper():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        args = _parse("--config", str(path))
        assert args.config == path and args.task in ("omniglot", "miniimagenet"), path
        assert path.stem.startswith(args.algo.replace("+", "p") + "-" + args.task), path  # maml++: mamlpp-...
        assert "et al." in path.read_text(), path  # the paper it follows is cited


def test_the_maml_omniglot_config_holds_the_papers_settings():
    # Finn et al. (2017), section 5.2 and appendix A.1: 5-way 1-shot, meta-batch 32, one inner step of 0.4.
    args = _parse("--config", str(CONFIGS / "maml-omniglot-5w1s.yaml"))
    assert (args.algo, args.ways, args.shots, args.meta_batch, args.inner_steps, args.inner_lr) == (
        "maml", 5, 1, 32, 1, 0.4,
    )  # fmt: skip


def test_flags_on_the_command_line_override_the_file_wherever_they_stand(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "algo: protonet\ntask: omniglot\nmeta_batch: 4\nsteps: 100\nno-progress: true\ntensorboard: false\n"
    )
    after = _parse("--config", str(path), "--steps", "7")
    before = _parse("--steps", "7", f"--config={path}")
    for args in (after, before):
        assert (args.algo, args.meta_batch, args.steps, args.no_progress, args.tensorboard) == (
            "protonet", 4, 7, True, False,
        )  # fmt: skip


@pytest.mark.parametrize(
    "text, message",
    [
        ("metabatch: 3\n", "'metabatch' is not a flag of metajax train"),
        ("steps: [1, 2\n", "is not valid YAML"),
        ("- algo\n", "must hold a mapping of flags to values, got list"),
        ("steps: [1, 2]\n", "steps needs one value, got [1, 2]"),
        ("no-progress: 1\n", "no-progress is a switch; expected true or false, got 1"),
        ("algo: mamlx\n", "invalid choice: 'mamlx'"),  # the flags' own checks apply
    ],
)
def test_bad_configs_are_one_line_naming_the_file(tmp_path, capsys, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--config", str(path), "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and (str(path) in err or "argument --algo" in err)
    assert not (tmp_path / "run").exists()


def test_a_missing_or_second_config_is_refused(tmp_path, capsys):
    for argv in (["--config", str(tmp_path / "none.yaml")], ["--config", "a.yaml", "--config", "b.yaml"]):
        with pytest.raises(SystemExit):
            cli.main(["train", *argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "none.yaml: No such file or directory" in err
    assert "--config is given 2 times (a.yaml, b.yaml); pass one file" in err


def test_a_run_from_a_config_records_it_and_resumes_with_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("shots: 2\nmeta-batch: 2\nsteps: 2\nsteps-per-call: 1\ncheckpoint-every: 1\neval-tasks: 2\n")
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(path), "--eval-steps", "1", "--no-progress", "--out", str(out)]) == 0
    resumed = ["--steps", "3", "--eval-steps", "1", "--no-progress", "--out", str(out), "--resume", str(out)]
    assert cli.main(["train", "--config", str(path), *resumed]) == 0
    import json

    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["config"] == str(path) and config["meta_batch"] == 2 and config["steps"] == 3
