"""Bad input is refused before any work, in one line, with a distinct exit code; help shows defaults."""

from __future__ import annotations

import pytest
from conftest import run_cli, save_image

from batchclf.cli import build_parser


@pytest.fixture
def images(tmp_path):
    save_image(tmp_path / "in" / "a.jpg")
    return tmp_path / "in"


def _assert_usage_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("batchclf: error:"), lines
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--model", "no-such-model"], ["unknown model", "efficientnet-lite0"]),
        (["--batch-size", "0"], ["--batch-size must be a positive number"]),
        (["--top-k", "-1"], ["--top-k"]),
        (["--threshold", "1.5"], ["--threshold must be between 0 and 1"]),
        (["--allow", "pizza", "--deny", "toaster"], ["cannot be combined"]),
        (["--allow", "pizza,flying saucer"], ["unknown label", "flying saucer"]),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], ["--workers"]),
        (["--scheduler-file", "/nonexistent/scheduler.json"], ["scheduler file"]),
        (["--cluster", "slurm"], ["--cluster slurm needs --cluster-config"]),
        (["--cluster-config", "jobs/slurm/jobqueue.yaml"], ["goes with --cluster slurm"]),
    ],
)
def test_bad_options(images, tmp_path, extra, fragments):
    _assert_usage_error(run_cli("run", str(images), str(tmp_path / "out.parquet"), *extra), *fragments)
    assert not (tmp_path / "out.parquet").exists()


def test_missing_input(tmp_path):
    _assert_usage_error(run_cli("run", str(tmp_path / "nowhere"), str(tmp_path / "o.parquet")), "does not exist")


def test_output_folder_missing(images, tmp_path):
    _assert_usage_error(run_cli("run", str(images), str(tmp_path / "no" / "o.parquet")), "does not exist")


def test_output_folder_not_writable(images):
    _assert_usage_error(run_cli("run", str(images), "/proc/predictions.parquet"), "not writable")


def test_output_is_a_folder(images, tmp_path):
    _assert_usage_error(run_cli("run", str(images), str(tmp_path)), "is a folder")


def test_no_images(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "notes.txt").write_text("hello")
    _assert_usage_error(run_cli("run", str(tmp_path / "in"), str(tmp_path / "o.parquet")), "no image files found")


def test_argparse_errors_exit_2(tmp_path):
    result = run_cli("run", str(tmp_path), str(tmp_path / "o.parquet"), "--batch-size", "many")
    assert result.returncode == 2 and "invalid int value" in result.stderr


def test_help_explains_every_option_with_default():
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    text = " ".join(run.format_help().split())
    for action in run._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help"
        assert action.option_strings[-1] in text
        if action.default not in (None, False, [], ()) and action.nargs != 0:
            assert f"(default: {action.default})" in text, action.option_strings
    assert "exit codes" in text
    top = run_cli("--help")
    assert top.returncode == 0 and "run" in top.stdout and "exit codes" in top.stdout
    assert run_cli("run", "--help").stdout.count("(default:") >= 10
