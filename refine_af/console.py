"""What the command line shows: the project's own progress bars and results, not library chatter.

The libraries underneath each print their own notices: deprecation warnings meant for library
authors, a progress bar per dataset ``map`` and per weight file, INFO logs. A user of ``refineaf``
can act on none of them, and they bury the lines that matter. :func:`configure` (called by the CLI
before any library is imported) keeps:

* the project's progress bars (stage 1 and 3 batches, scoring, the eval) and the trainers' step
  bar, which is the progress of stages 2 and 3b;
* errors from every library, and the project's own warnings, worded for the user.

``refineaf --verbose ...`` shows everything, as the libraries print it.
"""

from __future__ import annotations

import logging
import os
import warnings

# Loggers of the libraries the stages drive; ERROR and above still reach the console.
LIBRARY_LOGGERS = (
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "lm_eval",
    "httpx",
    "urllib3",
    "torch",
)
# Read by the libraries when they are imported: no bar per dataset map, weight file or download.
QUIET_ENVIRONMENT = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def configure(verbose: bool = False) -> None:
    """Quiet the libraries (unless ``verbose``); call before they are imported."""
    if verbose:
        os.environ["REFINEAF_VERBOSE"] = "1"  # trainers keep their own bars and printed logs
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    # Deprecation notices address the authors of TRL and PEFT, which call the renamed APIs.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # torch's notice that pinned memory needs a GPU: the CPU default run does not pin anyway.
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def note(message: str) -> None:
    """A line for the user from the project itself (never silenced)."""
    print(f"note: {message}", flush=True)
