"""batchclf: batch image classification over large folders, on Dask, to Parquet."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Category", "Classifier", "ImageDecodeError", "Prediction", "__version__", "classify"]

_LAZY = {  # imported on first use: ``import batchclf`` stays light
    "Category": "classifier",
    "Classifier": "classifier",
    "Prediction": "classifier",
    "ImageDecodeError": "decode",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def classify(source, output=None, **options):
    """Classify the images under ``source`` (a folder, a list file or a URL prefix) and return a ``pyarrow.Table``.

    Runs the same engine as ``batchclf run``. ``options`` are the fields of ``batchclf.config.RunConfig``
    (``model``, ``top_k``, ``workers``, ``scheduler``, ``storage_options`` (a dict) ...). ``output`` may be a
    local path or a URL (``s3://bucket/out.parquet``). Without ``output`` the Parquet file is
    written to a temporary folder and removed after it is read. Safe to call at the top level of a
    script or from stdin: the embedded cluster's workers never import the caller's ``__main__``.
    """
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    from .config import RunConfig
    from .job import run
    from .store import StorageOptions, location, location_argument

    options.setdefault("progress", False)
    given = options.get("storage_options", StorageOptions())
    if isinstance(given, str):  # JSON text, as on the command line
        options["storage_options"] = StorageOptions.parse(given)
    elif not isinstance(given, StorageOptions):
        options["storage_options"] = StorageOptions(given)
    with tempfile.TemporaryDirectory(prefix="batchclf-") as scratch:
        target = location_argument(str(output)) if output is not None else Path(scratch) / "predictions.parquet"
        run(RunConfig(input=location_argument(str(source)), output=target, **options))
        with location(target, options.get("storage_options")).arrow_source() as stored:
            return pq.read_table(stored)
