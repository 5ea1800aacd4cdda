"""Bad input is refused before any work, in one line, with a distinct exit code; help shows defaults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATASETS, TEST_CACHE, require_datasets, run_cli, save_image

from batchclf import backends, cli, supervise
from batchclf.cli import EXIT_CODES_HELP, build_parser
from batchclf.errors import EXIT_INCOMPLETE, EXIT_MASS_DROP


@pytest.fixture
def images(tmp_path):
    save_image(tmp_path / "in" / "a.jpg")
    return tmp_path / "in"


@pytest.fixture
def run_main(capsys, monkeypatch):
    """``batchclf ARGS`` as ``cli.main`` in this process: its exit status and what it printed, as ``run_cli``
    returns them, without a second spent starting Python. The job runs here, not in a supervised child
    (``test_missing_input`` goes through the real entry point), and the signal handlers ``main`` installs
    are put back afterwards."""
    monkeypatch.setattr(supervise, "can_supervise", lambda: False)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def run(*args: str) -> subprocess.CompletedProcess:
        try:
            status = cli.main(list(args))
        except SystemExit as stopped:  # argparse refusing an option value
            status = stopped.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(["batchclf", *args], status, captured.out, captured.err)

    yield run
    for number, handler in handlers.items():
        signal.signal(number, handler)


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
        (["--batch-size", "0"], ["--batch-size must be a positive number, got 0"]),
        (["--top-k", "-1"], ["--top-k must be a positive number, got -1"]),
        (["--shard-size", "-5"], ["--shard-size must be a positive number, got -5"]),
        (["--workers", "0"], ["--workers must be a positive number, got 0"]),
        (["--retries", "-1"], ["--retries must be 0 or more, got -1"]),
        (["--threshold", "1.5"], ["--threshold must be between 0 and 1, got 1.5"]),
        (["--allow", "pizza", "--deny", "toaster"], ["cannot be combined"]),
        (["--allow", "pizza,flying saucer"], ["unknown label", "flying saucer"]),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], ["--workers"]),
        (["--scheduler-file", "/nonexistent/scheduler.json"], ["scheduler file"]),
        (["--cluster", "slurm"], ["--cluster slurm needs --cluster-config"]),
        (["--cluster-config", "jobs/slurm/jobqueue.yaml"], ["goes with --cluster slurm"]),
    ],
)
def test_bad_options(run_main, images, tmp_path, extra, fragments):
    _assert_usage_error(run_main("run", str(images), str(tmp_path / "out.parquet"), *extra), *fragments)
    assert not (tmp_path / "out.parquet").exists()


def test_missing_input(tmp_path):
    """End to end: ``python -m batchclf``, the supervised child and its one line."""
    _assert_usage_error(run_cli("run", str(tmp_path / "nowhere"), str(tmp_path / "o.parquet")), "does not exist")


def test_output_folder_missing(run_main, images, tmp_path):
    _assert_usage_error(run_main("run", str(images), str(tmp_path / "no" / "o.parquet")), "does not exist")


def test_output_folder_not_writable(run_main, images):
    _assert_usage_error(run_main("run", str(images), "/proc/predictions.parquet"), "not writable")


def test_output_is_a_folder(run_main, images, tmp_path):
    _assert_usage_error(run_main("run", str(images), str(tmp_path)), "is a folder")


def test_no_images(run_main, tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "notes.txt").write_text("hello")
    _assert_usage_error(run_main("run", str(tmp_path / "in"), str(tmp_path / "o.parquet")), "no image files found")


def test_argparse_errors_exit_2(run_main, tmp_path):
    result = run_main("run", str(tmp_path), str(tmp_path / "o.parquet"), "--batch-size", "many")
    assert result.returncode == 2 and "invalid int value" in result.stderr


def test_zero_retries_is_allowed():
    from batchclf.config import RunConfig

    RunConfig(input=Path("."), output=Path("o.parquet"), retries=0).check()


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


def test_help_shows_each_default_once_and_only_where_it_says_something():
    text = run_cli("run", "--help").stdout
    flat = " ".join(text.split())
    for noise in ("(default: None)", "(default: ())", "(default: [])", "(default: True)", "(default: False)"):
        assert noise not in flat
    for option in ("--labels", "--workers", "--dashboard-address", "--batch-size"):
        entry = flat.split(f" {option} ", 1)[1].split(" --", 1)[0]
        assert entry.count("(default:") == 1, (option, entry)
    assert "(default: 127.0.0.1:8787 when stderr is a terminal, none otherwise, as in cron or systemd)" in flat
    assert "\nexit codes:\n  0 " in text and "\n  130  interrupted" in text  # one code a line, as written
    assert "--no-progress no progress bar, progress lines instead (the bar is shown only when stderr" in flat


def test_exit_codes_are_all_in_the_help():
    lines = {line.split()[0]: line for line in EXIT_CODES_HELP.splitlines()[1:]}
    assert set(lines) == {"0", "1", "2", "3", "4", "5", "6", "129", "130", "143"}
    assert EXIT_INCOMPLETE == 5 and "carried over" in lines["5"]
    assert EXIT_MASS_DROP == 6 and "--max-drop" in lines["6"]
    assert "resume" in lines["130"] and "SIGTERM" in lines["143"] and "SIGHUP" in lines["129"]


# --summary: checked before any work, written through a file of our own.


@pytest.mark.parametrize(
    "summary, fragment",
    [
        ("missing/summary.json", "--summary folder"),
        (".", "is a folder"),
        ("/proc/summary.json", "not writable"),
    ],
)
def test_summary_path_is_checked_before_any_work(run_main, images, tmp_path, summary, fragment):
    target = summary if summary.startswith("/") else str(tmp_path / summary)
    result = run_main("run", str(images), str(tmp_path / "out.parquet"), "--summary", target, "--no-progress")
    _assert_usage_error(result, fragment)
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.parts").exists()


def test_summary_is_not_written_through_a_planted_symlink(run_main, images, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    summary = tmp_path / "summary.json"
    for planted in (".summary.json.partial", ".summary.json.tmp"):
        (tmp_path / planted).symlink_to(victim)
    # An unknown model fails before any work, and a failed run still writes its summary.
    result = run_main("run", str(images), str(tmp_path / "o.parquet"), "--model", "nope", "--summary", str(summary))
    assert result.returncode == 2, result.stderr
    assert victim.read_text() == "precious\n"
    assert not summary.is_symlink() and json.loads(summary.read_text())["status"] == "failed"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".summary.json.") and not p.is_symlink()]


# The test session itself.


def test_the_session_uses_its_own_model_cache():
    assert os.environ["BATCHCLF_CACHE"] == TEST_CACHE
    assert backends.cache_dir() == Path(TEST_CACHE)
    assert not Path(TEST_CACHE).resolve().is_relative_to(Path("~/.cache").expanduser().resolve())


def test_missing_test_images_fail_rather_than_skip(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="test images not found"):
        require_datasets(tmp_path / "no-datasets")
    assert require_datasets(DATASETS) == DATASETS


# The Python API from a plain script: no __main__ guard, or read from stdin.

PLAIN_SCRIPT = """
import batchclf
table = batchclf.classify({images!r}, top_k=3, workers=1, dashboard_address="127.0.0.1:0")
print(table.num_rows, table.column("status").to_pylist().count("ok"), table.column("label")[0])
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["script", "stdin"])
def test_classify_from_a_plain_script(datasets, tmp_path, how):
    code = PLAIN_SCRIPT.format(images=str(datasets / "food_toy_appliance"))
    if how == "script":
        (tmp_path / "plain.py").write_text(code)
        command, stdin = [sys.executable, str(tmp_path / "plain.py")], None
    else:
        command, stdin = [sys.executable, "-"], code
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "bootstrapping" not in result.stderr, result.stderr
    count = len([p for p in (datasets / "food_toy_appliance").iterdir() if p.suffix in (".jpg", ".png")])
    assert result.stdout.split()[:2] == [str(count), str(count)], result.stdout


def test_an_allow_file_that_names_no_labels_is_refused(run_main, images, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    result = run_main("run", str(images), str(tmp_path / "out.parquet"), "--allow", f"@{empty}")
    assert result.returncode == 2 and "names no labels" in result.stderr, result.stderr
    assert not (tmp_path / "out.parquet").exists()
