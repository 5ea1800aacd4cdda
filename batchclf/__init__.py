"""batchclf: batch image classification over large folders, on Dask, to Parquet."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "classify"]


def classify(source, output=None, **options):
    """Classify the images under ``source`` (a folder or a list file) and return a ``pyarrow.Table``.

    Runs the same engine as ``batchclf run``. ``options`` are the fields of ``batchclf.config.RunConfig``
    (``model``, ``top_k``, ``workers``, ``scheduler``, ...). Without ``output`` the Parquet file is
    written to a temporary folder and removed after it is read. Safe to call at the top level of a
    script or from stdin: the embedded cluster's workers never import the caller's ``__main__``.
    """
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    from .config import RunConfig
    from .job import run

    options.setdefault("progress", False)
    with tempfile.TemporaryDirectory(prefix="batchclf-") as scratch:
        target = Path(output) if output is not None else Path(scratch) / "predictions.parquet"
        run(RunConfig(input=Path(source), output=target, **options), log=lambda *a, **k: None)
        return pq.read_table(target)
