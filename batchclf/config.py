"""The run's settings: one frozen object that the CLI and the Python API build and every stage reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backends import BACKENDS, QUANTIZATIONS
from .errors import UsageError
from .models.registry import DEFAULT_MODEL
from .store import StorageOptions, check_input, check_output

DEFAULT_SHARD_SIZE = 1024  # about a minute on one core with TensorFlow, ~15 s with LiteRT
DEFAULT_BATCH_SIZE = 32
DEFAULT_TOP_K = 5
DEFAULT_DASHBOARD_ADDRESS = "127.0.0.1:8787"  # loopback: the dashboard shows file paths and accepts no login


@dataclass(frozen=True)
class RunConfig:
    input: Path | str  # a local path, or an fsspec URL kept as text (``s3://bucket/prefix``)
    output: Path | str  # a local file, or an fsspec URL kept as text (``s3://bucket/out/predictions.parquet``)
    model: str = DEFAULT_MODEL
    labels: Path | None = None
    trust_model: bool = False  # load formats that can run code on load (a SavedModel)
    backend: str = "auto"
    quantize: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    shard_size: int = DEFAULT_SHARD_SIZE
    top_k: int = DEFAULT_TOP_K
    threshold: float = 0.0
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    embeddings: bool = False
    workers: int | None = None
    scheduler: str | None = None
    scheduler_file: Path | None = None
    cluster: str = "local"
    cluster_config: Path | None = None
    dashboard_address: str = DEFAULT_DASHBOARD_ADDRESS
    retries: int = 2
    keep_parts: bool = False
    incremental: bool = False
    keep_error_rows: bool = False
    hash: bool = False
    wait: bool = False
    progress: bool = True
    in_process: bool = False  # may score in a worker thread of this process (batchclf run watches it: supervise.py)
    extra: dict = field(default_factory=dict, compare=False)
    # fsspec options for a URL input or output (endpoint, credentials): never printed, recorded or logged.
    storage_options: StorageOptions = field(default_factory=StorageOptions, repr=False, compare=False)

    def validate(self) -> None:
        """Refuse bad settings before any work starts, with a message that says what to do."""
        check_input(self.input, self.storage_options, content_hash=self.hash)
        self._check_scalars()
        check_output(self.output, self.storage_options)  # last: in a bucket it writes (a probe object, removed at once)

    def _check_scalars(self) -> None:
        positive = {"--batch-size": self.batch_size, "--shard-size": self.shard_size, "--top-k": self.top_k}
        if self.workers is not None:
            positive["--workers"] = self.workers
        for option, value in positive.items():
            if value < 1:
                raise UsageError(f"{option} must be a positive number, got {value}")
        if self.retries < 0:
            raise UsageError(f"--retries must be 0 or more, got {self.retries}")
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if self.allow and self.deny:
            raise UsageError("--allow and --deny cannot be combined; use one of them")
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise UsageError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {self.quantize!r}")
        if self.quantize and self.backend == "tf":
            raise UsageError("--quantize runs a LiteRT model; use it with --backend litert or auto, not tf")
        if self.cluster not in ("local", "slurm"):
            raise UsageError(f"--cluster must be local or slurm, got {self.cluster!r}")
        if self.cluster == "slurm":
            if not self.cluster_config or not self.cluster_config.is_file():
                raise UsageError("--cluster slurm needs --cluster-config FILE (see jobs/slurm/jobqueue.yaml)")
            if self.scheduler or self.scheduler_file or self.workers:
                raise UsageError(
                    "--cluster slurm starts its own workers; drop --scheduler, --scheduler-file and --workers"
                )
        elif self.cluster_config:
            raise UsageError("--cluster-config goes with --cluster slurm")
        if self.scheduler and self.scheduler_file:
            raise UsageError("give --scheduler or --scheduler-file, not both")
        if self.scheduler_file and not self.scheduler_file.is_file():
            raise UsageError(f"scheduler file {self.scheduler_file} does not exist")
        if self.workers and (self.scheduler or self.scheduler_file):
            raise UsageError("--workers sizes the embedded cluster; it cannot be used with --scheduler")

    def result_options(self) -> dict:
        """The options that change what a row says: an incremental run reuses rows only if they match."""
        keep = ("backend", "quantize", "top_k", "threshold", "allow", "deny", "embeddings", "hash")
        values = {k: getattr(self, k) for k in keep if hasattr(self, k)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def recorded_options(self) -> dict:
        """The options that shape the output, as stored in the Parquet metadata."""
        keep = (
            "model",
            "backend",
            "quantize",
            "batch_size",
            "shard_size",
            "top_k",
            "threshold",
            "allow",
            "deny",
            "include",
            "exclude",
            "include_hidden",
            "embeddings",
        )
        values = asdict(self)
        return {k: (list(values[k]) if isinstance(values[k], tuple) else values[k]) for k in keep}
