"""The run's settings: one frozen object that the CLI and the Python API build and every stage reads.

Every default and every choice list lives here, and this module imports nothing of the package but
``errors``: the command line builds its parser from these constants and checks a config before any
heavy import (Dask, TensorFlow, Arrow's compute kernels) or fork.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UsageError

DEFAULT_MODEL = "efficientnet-lite0"
BUILTIN_MODEL_NAMES = (
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
)  # models/registry.py builds each
BACKENDS = ("auto", "tf", "litert")
QUANTIZATIONS = ("int8",)
# --exif: "camera" adds capture time, camera, lens and orientation; "gps" adds the location too (personal data)
EXIF_DEFAULT_MODE = "camera"  # what a bare --exif means
EXIF_WITH_LOCATION = "gps"
EXIF_MODES = (EXIF_DEFAULT_MODE, EXIF_WITH_LOCATION)
CLUSTERS = ("local", "slurm")
DEFAULT_SHARD_SIZE = 1024  # about a minute on one core with TensorFlow, ~15 s with LiteRT
DEFAULT_BATCH_SIZE = 32
DEFAULT_TOP_K = 5
DEFAULT_RETRIES = 2
DEFAULT_DASHBOARD_ADDRESS = "127.0.0.1:8787"  # loopback: the dashboard shows file paths and accepts no login
NO_DASHBOARD = "none"  # --dashboard-address none: no dashboard (None in RunConfig)
AUTO_DASHBOARD = "auto"  # the command line's default: the dashboard on a terminal, none in cron or systemd
LOG_FORMATS = ("auto", "plain", "text", "json")  # auto: plain on a terminal, timestamped text otherwise
DEFAULT_LOG_FORMAT = "auto"
LOG_FORMAT_VARIABLE = "BATCHCLF_LOG_FORMAT"  # the environment's default for --log-format (a unit's Environment=)
DEFAULT_PROGRESS_INTERVAL = 60.0  # seconds between progress lines, where there is no progress bar
TUPLE_FIELDS = ("allow", "deny", "include", "exclude")
LABEL_SET_FIELDS = ("allow", "deny")
WHOLE_NUMBER_FIELDS = ("batch_size", "shard_size", "top_k", "retries", "workers")
DEFAULT_MAX_DROP = 0.5  # --incremental refuses to drop more than this share of the rows it could reuse
# --changes FILE: the format its name asks for
CHANGES_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
CHANGE_KINDS = ("new", "changed", "dropped", "newly_failing", "recovered")


def dashboard_address(value: str, interactive: bool) -> str | None:
    """``--dashboard-address`` as ``RunConfig`` takes it: ``none`` is None; ``auto`` is the default address
    on a terminal and None elsewhere (a cron or systemd run has nobody to look at it, and a second run would
    only find the port taken)."""
    if value == AUTO_DASHBOARD:
        return DEFAULT_DASHBOARD_ADDRESS if interactive else None
    return None if value.strip().lower() == NO_DASHBOARD else value


# batchclf report
REPORT_LOW_SCORE = 0.5  # a top-1 score below this counts as a low-confidence prediction
REPORT_PER_LABEL = 24  # thumbnails a label
REPORT_TOP_LABELS = 20  # labels charted
REPORT_LISTED = 100  # rows of each list of paths on the page (new, gone, changed); the JSON lists more
REPORT_CONFUSED_PAIRS = 30  # most confused (true → predicted) pairs listed with --truth
REPORT_FOLDERS = 50  # folders listed in the per-folder table, most files first
REPORT_FOLDER_LABELS = 3  # top labels shown for each folder
REPORT_GROUP_DEPTH = 1  # folders under the input root that make one group (1: top-level folders)


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
    exif: str | None = None  # one of EXIF_MODES; None: no EXIF columns
    workers: int | None = None
    scheduler: str | None = None
    scheduler_file: Path | None = None
    cluster: str = "local"
    cluster_config: Path | None = None
    dashboard_address: str | None = DEFAULT_DASHBOARD_ADDRESS  # None: no dashboard
    retries: int = DEFAULT_RETRIES
    keep_parts: bool = False
    incremental: bool = False
    keep_error_rows: bool = False
    max_drop: float = DEFAULT_MAX_DROP
    hash: bool = False
    wait: bool = False
    changes: Path | str | None = None  # --changes FILE: what changed since the previous output, path by path
    progress: bool = True  # a progress bar; without one, a progress line every progress_interval seconds
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL  # 0: no progress lines
    in_process: bool = False  # may score in a worker thread of this process (batchclf run watches it: supervise.py)
    extra: dict = field(default_factory=dict, compare=False)
    # fsspec options for a URL input or output (endpoint, credentials): never printed, recorded or logged.
    # A ``store.StorageOptions`` (None: none given), whose ``repr`` shows the keys alone.
    storage_options: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.exif, bool):  # the Python API's exif=True: a bare --exif
            object.__setattr__(self, "exif", EXIF_DEFAULT_MODE if self.exif else None)
        for name in TUPLE_FIELDS:  # a list from the API or argparse's append: one hashable form
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple([value] if isinstance(value, str) else value or ()))
        for name in LABEL_SET_FIELDS:  # a set of class names: order and repeats say nothing
            names = getattr(self, name)
            if all(isinstance(item, str) for item in names):  # anything else is refused by check()
                object.__setattr__(self, name, tuple(sorted(set(names))))

    @classmethod
    def from_fields(cls, values: dict) -> RunConfig:
        """A config from a mapping that may hold other keys too (``vars(args)``): taken by field name."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def check(self) -> None:
        """Refuse bad settings before any work starts, with a message that says what to do: the checks
        that need no file system and no import (numbers, choices, how options combine). Where the input
        and output are is checked by ``store.check_locations``."""
        self._check_types()
        positive = {"--batch-size": self.batch_size, "--shard-size": self.shard_size, "--top-k": self.top_k}
        if self.workers is not None:
            positive["--workers"] = self.workers
        for option, value in positive.items():
            if value < 1:
                raise UsageError(f"{option} must be a positive number, got {value}")
        if self.retries < 0:
            raise UsageError(f"--retries must be 0 or more, got {self.retries}")
        if not 0.0 <= self.max_drop <= 1.0:
            raise UsageError(f"--max-drop must be between 0 and 1, got {self.max_drop}")
        if not self.progress_interval >= 0:
            raise UsageError(f"--progress-interval must be 0 (no lines) or more seconds, got {self.progress_interval}")
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if self.allow and self.deny:
            raise UsageError("--allow and --deny cannot be combined; use one of them")
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.exif is not None and self.exif not in EXIF_MODES:
            raise UsageError(f"--exif must be one of {', '.join(EXIF_MODES)}, got {self.exif!r}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise UsageError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {self.quantize!r}")
        if self.quantize and self.backend == "tf":
            raise UsageError("--quantize runs a LiteRT model; use it with --backend litert or auto, not tf")
        if self.cluster not in CLUSTERS:
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
        self._check_changes()

    def changes_format(self) -> str | None:
        """``parquet`` or ``jsonl``, from the name of ``--changes`` (None: no changes file)."""
        if self.changes is None:
            return None
        name = str(self.changes).rsplit("/", 1)[-1].lower()
        return next((kind for suffix, kind in CHANGES_FORMATS.items() if name.endswith(suffix)), None)

    def _check_changes(self) -> None:
        if self.changes is None:
            return
        if not isinstance(self.changes, (str, Path)):
            raise UsageError(f"changes must be a file name, got {self.changes!r}")
        if self.changes_format() is None:
            raise UsageError(f"--changes {self.changes}: name it .parquet, or .jsonl (or .json) for JSON lines")
        if str(self.changes) == str(self.output):
            raise UsageError(f"--changes {self.changes} is the output itself; give the changes file another name")

    def _check_types(self) -> None:
        """What the Python API may pass that the command line's parser would have refused."""
        for name in WHOLE_NUMBER_FIELDS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise UsageError(f"{name} must be a whole number, got {value!r}")
        for name in ("threshold", "max_drop", "progress_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"{name} must be a number, got {value!r}")
        for name in TUPLE_FIELDS:
            if not all(isinstance(item, str) for item in getattr(self, name)):
                raise UsageError(f"{name} must be a name or a list of names, got {getattr(self, name)!r}")

    def result_options(self) -> dict:
        """The options that change what a row says: an incremental run reuses rows only if they match."""
        keep = ("backend", "quantize", "top_k", "threshold", "allow", "deny", "embeddings", "hash")
        values = {k: getattr(self, k) for k in keep if hasattr(self, k)}
        if self.exif:  # only then: the reuse keys of runs without EXIF columns stay what they were
            values["exif"] = self.exif
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
            "exif",
        )
        values = asdict(self)
        return {k: (list(values[k]) if isinstance(values[k], tuple) else values[k]) for k in keep}


# batchclf train --fine-tune
@dataclass(frozen=True)
class FineTuneSettings:
    unfreeze: int = 3  # MBConv blocks retrained, counted from the top (the head convolution is always retrained)
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-5
    validation_fraction: float = 0.2
    patience: int = 3
