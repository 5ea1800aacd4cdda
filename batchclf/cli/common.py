"""What every command's parser shares: the help layout, the exit codes, the label-list argument."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from ..config import BUILTIN_MODEL_NAMES, DEFAULT_MODEL
from ..errors import EXIT_INTERRUPTED, EXIT_JOB_FAILED, BatchclfError, Interrupted
from ..runlog import logger

EXIT_CODES_HELP = """exit codes:
  0    success (some files may be error rows)
  1    the job failed (a cluster or worker failure, or the storage kept failing; see the message)
  2    usage error: bad option, missing input or output folder, unknown model, no images found
  3    every file failed to decode (the output is still written)
  4    another run holds the lock on this output
  5    output written but some folders could not be read; their previous rows were carried over
  6    refused: --incremental would drop more of the previous rows than --max-drop; nothing written
  129  stopped by SIGHUP (the terminal or SSH session closed); run the same command again to resume
  130  interrupted (Ctrl-C, SIGINT); run the same command again to resume
  143  stopped by SIGTERM (a time limit, kubectl, systemctl stop); run the same command again to resume
"""


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where it says something: not for flags, empty values, or help that gives its own.
    Text laid out in lines (the exit codes) keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.nargs == 0 or "(default:" in text or action.default in (None, (), [], "", argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def add_model_arguments(parser) -> None:
    """``--model``, ``--labels`` and ``--trust-model``, as ``run`` and ``predict`` take them."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"built-in model ({', '.join(BUILTIN_MODEL_NAMES)}), a .keras/.h5/.tflite/.onnx file, a SavedModel "
        "folder or a folder written by 'batchclf train'",
    )
    parser.add_argument(
        "--labels", type=Path, default=None, help="class names, one a line (default: labels.txt beside a user model)"
    )
    parser.add_argument(
        "--trust-model",
        action="store_true",
        help="allow models whose loading runs the code they hold (a SavedModel, a Keras file with a Lambda layer): "
        "only for models from people you trust",
    )


def labels_list(text: str) -> tuple[str, ...]:
    """``a,b,c`` or ``@file`` (one label a line)."""
    if text.startswith("@"):
        try:
            lines = Path(text[1:]).read_text(encoding="utf-8-sig").splitlines()
        except OSError as error:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise argparse.ArgumentTypeError(f"{text[1:]} is not UTF-8 text; write one label a line") from None
        labels = tuple(line.strip() for line in lines if line.strip())
    else:
        labels = tuple(part.strip() for part in text.split(",") if part.strip())
    if not labels:  # an empty filter would silently mean no filter at all
        raise argparse.ArgumentTypeError(f"{text!r} names no labels; give 'a,b,c' or @FILE with one label a line")
    return labels


def exit_status(handler, *args) -> int:
    """Run ``handler(*args)``; an error a user can act on becomes one line of the log (``runlog``) and its
    exit status."""
    try:
        return handler(*args)
    except Interrupted as error:
        logger.warning(str(error), extra={"fields": {"exit_code": error.exit_code}})
        return error.exit_code
    except BatchclfError as error:
        logger.error(str(error), extra={"fields": {"exit_code": error.exit_code}})
        return error.exit_code
    except KeyboardInterrupt:
        logger.warning(str(Interrupted(signal.SIGINT)), extra={"fields": {"exit_code": EXIT_INTERRUPTED}})
        return EXIT_INTERRUPTED
    except Exception as error:  # a failure we did not foresee: one line, and where to look
        failure = f"the job failed: {type(error).__name__}: {error}"
        logger.error(failure, extra={"fields": {"exit_code": EXIT_JOB_FAILED}})
        if os.environ.get("BATCHCLF_DEBUG"):
            raise
        return EXIT_JOB_FAILED
