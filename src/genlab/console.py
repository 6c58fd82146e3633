"""What reaches the console: the libraries' noise filtered out, genlab's own warnings kept, each
as one ``[genlab][WARNING]`` line.

Imports nothing heavy: entry points call ``quiet_libraries()`` before Lightning loads, and
Hydra's job logging builds ``ConsoleHandler`` (conf/hydra/default.yaml).
"""

import logging
import re
import sys
import warnings
from typing import IO, Any

from genlab.errors import GenlabWarning

# Lightning's advertisements, logged through its rank-zero logger (one of these names,
# depending on which package imported it last).
TIP = r"^💡 Tip: .*\[(litlogger|litmodels)\]"
TIP_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)
# Logged at every save_checkpoint that leaves weights_only unset; it changes nothing.
WEIGHTS_ONLY = r"^`weights_only` was not set, defaulting to `False`\.$"
CHECKPOINT_LOGGER = "pytorch_lightning.trainer.connectors.checkpoint_connector"
# torch (2.14 here) deprecates constructing LeafSpec; Lightning's CombinedLoader does so for every
# dataloader, so no genlab setting avoids it (fixed in Lightning, not here).
LEAF_SPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class DropMessages(logging.Filter):
    """Drops log records whose message matches a pattern."""

    def __init__(self, *patterns: str) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


# one instance each, so a second quiet_libraries() adds nothing (addFilter skips duplicates)
TIP_FILTER = DropMessages(TIP)
WEIGHTS_ONLY_FILTER = DropMessages(WEIGHTS_ONLY)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` that logs a GenlabWarning on the ``genlab`` logger.

    Python's own form names the file and line ``stacklevel`` lands in (often Hydra's
    instantiate) and repeats the source line; other warnings keep it.
    """
    if issubclass(category, GenlabWarning):
        logging.getLogger("genlab").warning(str(message))
    else:
        PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


PYTHON_SHOWWARNING = warnings.showwarning


def quiet_libraries() -> None:
    """Silence exactly the library lines that say nothing about this run, and show genlab's
    warnings as log lines; idempotent."""
    warnings.showwarning = show_warning
    for name in TIP_LOGGERS:
        logging.getLogger(name).addFilter(TIP_FILTER)
    logging.getLogger(CHECKPOINT_LOGGER).addFilter(WEIGHTS_ONLY_FILTER)
    # only where Lightning triggers it: the same deprecation in user code still shows
    warnings.filterwarnings(
        "ignore", message=LEAF_SPEC, category=FutureWarning, module=r"pytorch_lightning\."
    )


class ConsoleHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is when a record comes.

    A rich progress bar in a terminal swaps ``sys.stdout`` for a proxy that prints above the
    bar; a stream fixed at start-up would write through the bar, which then erases the line.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)  # Hydra passes ext://sys.stdout; the property ignores it

    @property
    def stream(self) -> IO[str]:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass
