"""The trainer against failures and bad input: a save that fails midway, and options refused before any work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from batchclf.training import artifact
from batchclf.training.artifact import check_model_dir, save_model_dir
from batchclf.training.dataset import read_dataset
from batchclf.training.features import ExtractionConfig, _cache_folder, extract_features, featurizer_id

NOWHERE = "tcp://127.0.0.1:9"  # a scheduler that is never reached: any work started would fail differently


def _tiny_model(bias: float):
    import keras

    inputs = keras.Input((4,))
    head = keras.layers.Dense(2, activation="softmax", name="predictions")
    model = keras.Model(inputs, head(inputs))
    head.set_weights([np.zeros((4, 2), np.float32), np.array([bias, -bias], np.float32)])
    return model


def _save(model_dir: Path, version: int) -> None:
    save_model_dir(_tiny_model(float(version)), model_dir, ("a", "b"), {"format": "batchclf-model", "version": version})


def _load(model_dir: Path) -> tuple[int, float]:
    import keras

    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True, compile=False)
    version = json.loads((model_dir / "metadata.json").read_text())["version"]
    return version, float(model.get_layer("predictions").get_weights()[1][0])


def _entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-swap", "rename-aside"])
def test_a_failed_save_keeps_the_old_model_and_leaves_nothing_behind(tmp_path, monkeypatch, exchange):
    model_dir = tmp_path / "model"
    _save(model_dir, 1)
    assert _entries(tmp_path) == ["model"]
    assert _entries(model_dir) == ["labels.txt", "metadata.json", "model.keras"]
    if not exchange:
        monkeypatch.setattr(artifact, "_exchange", lambda first, second: False)

    real_fsync = artifact.fsync_path

    def fsync(path):
        if path.name == "metadata.json":  # every file is written; flushing the last one fails
            raise OSError(28, "No space left on device")
        real_fsync(path)

    monkeypatch.setattr(artifact, "fsync_path", fsync)
    with pytest.raises(OSError, match="No space left"):
        _save(model_dir, 2)
    assert _load(model_dir) == (1, 1.0)
    assert _entries(tmp_path) == ["model"]  # no hidden staging folder
    assert _entries(model_dir) == ["labels.txt", "metadata.json", "model.keras"]
    monkeypatch.undo()
    if not exchange:
        monkeypatch.setattr(artifact, "_exchange", lambda first, second: False)
    check_model_dir(model_dir)  # training into it again is allowed
    _save(model_dir, 2)
    assert _load(model_dir) == (2, 2.0)
    assert _entries(tmp_path) == ["model"]


def test_a_failed_final_rename_puts_the_old_model_back(tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    _save(model_dir, 1)
    monkeypatch.setattr(artifact, "_exchange", lambda first, second: False)
    real_rename = os.rename

    def rename(source, target):
        if Path(source).name.startswith(".model.partial-"):
            raise OSError(5, "Input/output error")
        real_rename(source, target)

    monkeypatch.setattr(artifact.os, "rename", rename)
    with pytest.raises(OSError, match="Input/output"):
        _save(model_dir, 2)
    assert _load(model_dir) == (1, 1.0)
    assert _entries(tmp_path) == ["model"]


def test_the_swap_replaces_every_file_at_once(tmp_path):
    """A file only the old model had does not survive into the new one: the folder is replaced, not merged."""
    model_dir = tmp_path / "model"
    _save(model_dir, 1)
    (model_dir / "notes.txt").write_text("old")
    _save(model_dir, 2)
    assert _entries(model_dir) == ["labels.txt", "metadata.json", "model.keras"]
    assert _load(model_dir) == (2, 2.0)
    assert oct(model_dir.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_killed_save_is_cleaned_up_by_the_next(tmp_path):
    """Hidden siblings of a save whose process is gone are removed; a live process's are left alone."""
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    abandoned = tmp_path / f".model.partial-{dead}-x1"
    abandoned.mkdir()
    (abandoned / "model.keras").write_bytes(b"half")
    live = tmp_path / f".model.partial-{os.getppid()}-x2"
    live.mkdir()
    _save(tmp_path / "model", 1)
    assert not abandoned.exists() and live.is_dir()


def test_a_save_killed_between_its_renames_is_undone_by_the_next(tmp_path):
    """Killed after moving the old model aside: the next save puts it back before replacing it."""
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    _save(tmp_path / "model", 1)
    holder = tmp_path / f".model.old-{dead}-x1"
    holder.mkdir()
    os.rename(tmp_path / "model", holder / "model")
    artifact._remove_abandoned(tmp_path, "model")
    assert _load(tmp_path / "model") == (1, 1.0) and _entries(tmp_path) == ["model"]


def test_the_feature_cache_is_keyed_by_featurizer():
    lite0, lite2 = (
        featurizer_id(ExtractionConfig(model=name)) for name in ("efficientnet-lite0", "efficientnet-lite2")
    )
    assert lite0.startswith("efficientnet-lite0:avg_pool:224px") and lite2.startswith(
        "efficientnet-lite2:avg_pool:260px"
    )
    assert _cache_folder(lite0) != _cache_folder(lite2)


def test_special_files_named_as_images_are_unreadable_images(tmp_path, monkeypatch):
    """A FIFO, a socket and a link to /dev/zero named .jpg in a tags.tsv are kept by the reader (they are
    there) and refused by the content hash at once, saying what they are: skipped, never waited on. No
    image is left to score, so no job starts (the scheduler is unreachable)."""
    import socket

    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    monkeypatch.chdir(tmp_path)  # a short socket name: AF_UNIX paths are limited to about 100 bytes
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("sock.jpg")
        (tmp_path / "tags.tsv").write_text("pipe.jpg\tx\nzero.jpg\ty\nsock.jpg\tx\n")
        data = read_dataset(tmp_path / "tags.tsv")
        assert data.paths == tuple(str(tmp_path / name) for name in ("pipe.jpg", "zero.jpg", "sock.jpg"))
        features = extract_features(list(data.paths), ExtractionConfig(scheduler=NOWHERE), log=lambda *a, **k: None)
    assert features.paths == [] and features.decoded == 0
    assert features.errors == {
        str(tmp_path / "pipe.jpg"): "not a regular file: a FIFO (named pipe)",
        str(tmp_path / "zero.jpg"): "not a regular file: a character device",
        str(tmp_path / "sock.jpg"): "not a regular file: a socket",
    }


@pytest.fixture()
def food(datasets) -> Path:
    return datasets / "food_toy_appliance"


def _refused(result, *expected: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("batchclf: error: "), result.stderr
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--fine-tune", "--unfreeze", "-3"], "--unfreeze must be 0 or more, got -3"),
        (["--fine-tune", "--patience", "-1"], "--patience must be 0 or more, got -1"),
        (["--fine-tune", "--epochs", "0"], "--epochs must be a positive number, got 0"),
        (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295, got -1"),
        (["--seed", str(2**32)], f"got {2**32}"),
        (["--featurizer", "efficientnet-lite9"], "--featurizer 'efficientnet-lite9' is not a built-in model"),
        (["--featurizer", "efficientnet-lite0,"], "--featurizer takes built-in model names separated by commas"),
        (["--featurizer", "efficientnet-lite0,efficientnet-lite0"], "names efficientnet-lite0 twice"),
        (
            ["--featurizer", "efficientnet-lite0,efficientnet-lite2", "--fine-tune"],
            "--fine-tune retrains one network",
        ),
        (["--test-images", "."], "--test-images gives the folder of the --test TSV's images; it needs --test"),
    ],
)
def test_train_refuses_bad_options_before_any_work(food, tmp_path, options, expected):
    result = run_cli("train", str(food / "tags.tsv"), str(tmp_path / "model"), "--scheduler", NOWHERE, *options)
    _refused(result, expected)
    assert not (tmp_path / "model").exists()


def test_train_refuses_zero_workers_even_with_every_feature_cached(food, tmp_path, monkeypatch):
    """With every feature cached no worker would be started, so the check must not depend on starting one."""
    from batchclf.fsutil import sha256_file as file_digest
    from batchclf.training.dataset import read_dataset

    cache = tmp_path / "cache"
    monkeypatch.setenv("BATCHCLF_CACHE", str(cache))
    folder = _cache_folder(featurizer_id(ExtractionConfig()))
    assert str(folder).startswith(str(cache))
    folder.mkdir(parents=True)
    for path in read_dataset(food / "tags.tsv").paths:
        np.save(folder / f"{file_digest(path)}.npy", np.ones(1280, np.float32))
    result = run_cli("train", str(food / "tags.tsv"), str(tmp_path / "model"), "--workers", "0", "--test-fraction", "0")
    _refused(result, "--workers must be a positive number, got 0")
    assert not (tmp_path / "model").exists()


def test_train_test_images_names_its_option(food, tmp_path):
    result = run_cli(
        "train", str(food / "tags.tsv"), str(tmp_path / "m"), "--test", str(food), "--test-images", str(food)
    )
    _refused(result, "--test-images only applies to a TSV file")


@pytest.fixture()
def unwritable_folder(tmp_path) -> Path:
    if os.geteuid() == 0:  # root writes through permission bits; a read-only mount stops it
        folder = Path("/proc/sys")
    else:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
    assert folder.is_dir() and not os.access(folder, os.W_OK)
    return folder


@pytest.mark.parametrize("target", ["folder", "missing", "unwritable"])
def test_evaluate_checks_the_json_target_before_any_work(food, tmp_path, unwritable_folder, target):
    json_path, expected = {
        "folder": (tmp_path, "is a folder; give the name of a file"),
        "missing": (tmp_path / "absent" / "report.json", "does not exist"),
        "unwritable": (unwritable_folder / "report.json", "is not writable"),
    }[target]
    result = run_cli(
        "evaluate", str(food / "test-tags.tsv"), "--json", str(json_path), "--scheduler", NOWHERE, "--no-progress"
    )
    _refused(result, f"--json {json_path}", expected)


@pytest.mark.parametrize(("option", "value"), [("--workers", "0"), ("--batch-size", "0")])
def test_evaluate_refuses_non_positive_numbers(food, option, value):
    result = run_cli("evaluate", str(food / "test-tags.tsv"), option, value)
    _refused(result, f"{option} must be a positive number, got {value}")


def test_cached_features_are_written_through_unpredictable_names(tmp_path):
    """A link planted at a guessable temporary name (or at the final name) is never written through."""
    from batchclf.training.features import _load_cached, _store

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f".ab.{os.getpid()}.npy").symlink_to(victim)
    (cache / "cd.npy").symlink_to(victim)
    _store(cache, "ab", np.ones(2))
    _store(cache, "cd", np.zeros(2))
    assert victim.read_text() == "keep"
    np.testing.assert_array_equal(_load_cached(cache, "ab"), np.ones(2))
    assert not (cache / "cd.npy").is_symlink()
    assert sorted(os.listdir(cache)) == [f".ab.{os.getpid()}.npy", "ab.npy", "cd.npy"]


def test_the_evaluate_report_is_written_through_a_private_temporary_file(tmp_path):
    from batchclf.training.evaluate import write_json

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "report.json").symlink_to(victim)
    write_json({"images": 3}, tmp_path / "report.json")
    assert victim.read_text() == "keep"
    assert json.loads((tmp_path / "report.json").read_text()) == {"images": 3}
    assert sorted(os.listdir(tmp_path)) == ["report.json", "victim.txt"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-swap", "rename-aside"])
def test_a_model_folder_that_is_a_link_is_replaced_and_its_target_kept(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(artifact, "_exchange", lambda first, second: False)
    target = tmp_path / "elsewhere"
    _save(target, 1)
    (tmp_path / "model").symlink_to(target)
    _save(tmp_path / "model", 2)
    assert not (tmp_path / "model").is_symlink() and _load(tmp_path / "model") == (2, 2.0)
    assert _load(target) == (1, 1.0)
    assert _entries(tmp_path) == ["elsewhere", "model"]


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_help_shows_only_defaults_that_say_something(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for noise in ("(default: None)", "(default: False)", "(default: True)"):
        assert noise not in text
    if command == "train":
        assert (
            "--test-images DIR folder the --test TSV's image paths are relative to (default: the TSV's folder)" in text
        )
        assert "--featurizer NAME[,NAME]" in text and "(default: efficientnet-lite0)" in text
