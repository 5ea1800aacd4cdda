"""Parquet files at a ``Location``: written atomically, read back whole, a row group at a time, or by footer.

Written once against the interface: a file on disk and an object in a bucket are read and written the
same way, through ``Location.arrow_source`` and ``Location.atomic_write``. ``answer_arrows_pandas_probe``
keeps pyarrow from importing pandas in the processes batchclf owns.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import location
from .base import Location

METADATA_KEY = b"batchclf"  # the key of the run record in an output's footer (``writer.read_run_metadata``)


@contextlib.contextmanager
def atomic_parquet(target: Location | Path, schema: pa.Schema, **options) -> Iterator[pq.ParquetWriter]:
    """A ParquetWriter whose file replaces ``target`` only when the block ends without an error: a reader
    sees the old file or the new one, never part of one (``Location.atomic_write``)."""
    with location(target).atomic_write() as stream:
        with pq.ParquetWriter(stream, schema, compression="zstd", **options) as writer:
            yield writer


def read_schema(place: Location | Path) -> pa.Schema:
    """The schema of a Parquet file (only its footer is read)."""
    with location(place).arrow_source() as source:
        return pq.read_schema(source)


def is_batchclf_output(place: Location | Path) -> bool:
    """Whether the file is an output batchclf wrote: Parquet whose footer holds the run record (only the
    footer is read)."""
    try:
        return METADATA_KEY in (read_schema(place).metadata or {})
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # not Parquet at all
        return False


def read_parts(parts: Iterable[Location | Path], columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The rows of consecutive parts, in order: a path-sorted stream when the parts are one attempt's."""
    for part in parts:
        with location(part).arrow_source() as source:
            table = pq.ParquetFile(source).read(columns=columns)  # read_table would import pyarrow.dataset
        if table.num_rows:
            yield table


def read_output(
    place: Location | Path, columns: list[str] | None = None, batch_rows: int = 65536
) -> Iterator[pa.Table]:
    """An output file as a stream of tables, one row group's worth at a time."""
    with location(place).arrow_source() as source:
        parquet = pq.ParquetFile(source)
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            yield pa.Table.from_batches([batch])


def answer_arrows_pandas_probe() -> None:
    """Spare this process pyarrow's import of pandas (0.2-0.4 s of a core). Only for processes batchclf owns:
    ``batchclf run`` and ``report`` once their arguments are good, and the embedded cluster's workers.

    pyarrow imports pandas, when it is installed, the first time it builds an array, only to ask whether
    its input is a pandas object; batchclf never hands it one. The probe runs once per process and keeps its
    answer, so it is made here with pandas out of reach; ``import pandas`` works again right after it
    (``to_pandas()`` tries the import anew).
    """
    if "pandas" in sys.modules:
        return  # imported already: nothing left to spare
    sys.meta_path.insert(0, _NoPandas)
    try:
        pa.array([0])  # a sequence: the C++ converter asks too
    finally:
        sys.meta_path.remove(_NoPandas)


class _NoPandas:
    """An import finder under which ``import pandas`` fails as if it were not installed."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas":
            raise ModuleNotFoundError("No module named 'pandas'", name=name)
        return None
