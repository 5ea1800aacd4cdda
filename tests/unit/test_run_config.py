"""``RunConfig``: the checks that need nothing but the values, and the config built by field name."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchclf.config import BACKENDS, BUILTIN_MODEL_NAMES, DEFAULT_MODEL, RunConfig
from batchclf.errors import UsageError


def config(**fields) -> RunConfig:
    return RunConfig(input=Path("in"), output=Path("out.parquet"), **fields)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"batch_size": 0}, "--batch-size must be a positive number, got 0"),
        ({"top_k": 0}, "--top-k must be a positive number, got 0"),
        ({"shard_size": -1}, "--shard-size must be a positive number, got -1"),
        ({"workers": 0}, "--workers must be a positive number, got 0"),
        ({"retries": -1}, "--retries must be 0 or more, got -1"),
        ({"threshold": 1.5}, "--threshold must be between 0 and 1, got 1.5"),
        ({"allow": ("a",), "deny": ("b",)}, "--allow and --deny cannot be combined"),
        ({"backend": "cuda"}, "--backend must be one of auto, tf, litert"),
        ({"quantize": "int4"}, "--quantize must be one of int8"),
        ({"exif": "all"}, "--exif must be one of camera, gps, got 'all'"),
        ({"quantize": "int8", "backend": "tf"}, "--quantize runs a LiteRT model"),
        ({"cluster": "k8s"}, "--cluster must be local or slurm"),
        ({"cluster": "slurm"}, "--cluster slurm needs --cluster-config FILE"),
        ({"cluster_config": Path("x.yaml")}, "--cluster-config goes with --cluster slurm"),
        ({"scheduler": "tcp://a:1", "workers": 2}, "--workers sizes the embedded cluster"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line(fields, message):
    with pytest.raises(UsageError) as raised:
        config(**fields).check()
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_good_settings_pass():
    config(top_k=3, threshold=0.5, allow=("tench",), workers=2).check()


def test_a_config_is_built_by_field_name_and_ignores_other_keys():
    built = RunConfig.from_fields({"input": Path("in"), "output": Path("o"), "top_k": 3, "summary": None, "handler": 1})
    assert built.top_k == 3 and built.model == DEFAULT_MODEL


def test_lists_become_tuples_and_a_lone_name_is_one_name():
    built = config(allow="tench", include=["*.jpg", "*.png"])
    assert built.allow == ("tench",) and built.include == ("*.jpg", "*.png")
    assert hash(built)  # frozen and hashable


def test_result_options_are_what_changes_a_row():
    options = config(top_k=3, allow=("a", "b"), workers=4, batch_size=8).result_options()
    assert options == {
        "backend": "auto",
        "quantize": None,
        "top_k": 3,
        "threshold": 0.0,
        "allow": ["a", "b"],
        "deny": [],
        "embeddings": False,
        "hash": False,
    }


def test_exif_is_a_result_option_only_when_asked_for():
    assert "exif" not in config().result_options()  # the reuse keys of runs without --exif are unchanged
    assert config(exif="camera").result_options()["exif"] == "camera"
    assert config(exif="gps").result_options() != config(exif="camera").result_options()
    assert config(exif=True).exif == "camera" and config(exif=False).exif is None  # the Python API's flag
    assert config(exif="gps").recorded_options()["exif"] == "gps"


def test_the_choice_lists_match_what_the_registry_builds():
    from batchclf.models.registry import BUILTIN_MODELS

    assert tuple(BUILTIN_MODELS) == BUILTIN_MODEL_NAMES and DEFAULT_MODEL in BUILTIN_MODELS
    assert BACKENDS[0] == "auto"


def test_allow_and_deny_are_sets_of_names_for_the_reuse_key():
    assert config(allow=("b", "a", "b")).allow == ("a", "b")
    assert config(allow="b,a".split(",")).result_options() == config(allow=["a", "b", "a"]).result_options()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"top_k": "3"}, "top_k must be a whole number, got '3'"),
        ({"batch_size": 2.5}, "batch_size must be a whole number, got 2.5"),
        ({"workers": True}, "workers must be a whole number, got True"),
        ({"threshold": "0.5"}, "threshold must be a number, got '0.5'"),
        ({"allow": [1, 2]}, "allow must be a name or a list of names"),
        ({"max_drop": 1.5}, "--max-drop must be between 0 and 1, got 1.5"),
    ],
)
def test_what_the_api_may_pass_is_refused_in_one_line(fields, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(**fields).check()
