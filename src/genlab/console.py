"""What reaches the console: the libraries' noise filtered out, genlab's own warnings kept, each
as one ``[genlab][WARNING]`` line.

Imports nothing heavy: entry points call ``quiet_libraries()`` before Lightning loads, and
Hydra's job logging builds ``ConsoleHandler`` (conf/hydra/default.yaml).
"""

import logging
import os
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
# What tells a process it is not rank 0 before Lightning knows: Lightning's DDP launcher sets
# LOCAL_RANK in each process it starts, a second node runs with NODE_RANK, torchrun sets RANK
# and GROUP_RANK, srun sets SLURM_PROCID, LSF's jsrun JSM_NAMESPACE_RANK (Lightning's own guess
# reads RANK, LOCAL_RANK, SLURM_PROCID and JSM_NAMESPACE_RANK, not NODE_RANK).
RANK_VARIABLES = (
    "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"
)  # fmt: skip


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


def rank_zero() -> bool:
    """False in a process that a launcher started as another rank than global rank 0."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


class RankZeroOnly(logging.Filter):
    """Keeps genlab's info and warnings to rank 0 (errors from every rank still show)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or rank_zero()


RANK_ZERO_FILTER = RankZeroOnly()


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` that shows each warning once, on rank 0, and a GenlabWarning
    as a line of the ``genlab`` logger.

    Python's own form names the file and line ``stacklevel`` lands in (often Hydra's
    instantiate) and repeats the source line; other warnings keep it.
    """
    if not rank_zero():
        return  # rank 0 says it: under DDP every rank would repeat the same warning
    # Python shows a warning once per place it is raised from, and again once any library
    # (wandb, at import) touches the filters: Lightning's srun hint came twice that way.
    said = (category, str(message))
    if said in SAID:
        return
    SAID.add(said)
    if issubclass(category, GenlabWarning):
        logging.getLogger("genlab").warning(str(message))
    else:
        PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


PYTHON_SHOWWARNING = warnings.showwarning
SAID: set[tuple[type, str]] = set()  # warnings shown in this process


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
    logging.getLogger("genlab").addFilter(RANK_ZERO_FILTER)


# The sweep jobs of this process that failed, by number, each with its one-line cause: run_task
# in the job, or under SLURM the launcher in the submitting process. Each said why in its line;
# the door exits 2 at the end (genlab.cli.report).
FAILED_JOBS: dict[int, str] = {}


def job_error(prog: str, num: int, overrides: str, cause: str) -> None:
    """Say in one line on stderr that sweep job ``num`` failed, and why; record it."""
    FAILED_JOBS[num] = cause
    print(f"{prog}: error: job {num} ({overrides or 'no overrides'}): {cause}", file=sys.stderr)


class OncePerText(logging.Filter):
    """Passes the first record of each message, its numbers aside (a poll count, a job id)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        said = (record.levelno, re.sub(r"\d+", "#", record.getMessage()))
        if said in self.seen:
            return False
        self.seen.add(said)
        return True


class BelowWarning(logging.Filter):
    """Passes records below WARNING: another handler of the same logger shows the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


# submitit's logger writes each record to stdout, from WARNING up to stderr as well, and passes
# it on to Hydra's root handler: a warning came three times, and again at each poll of the queue
# ("Call #3 - Bypassing sacct error ..." on a cluster that keeps no accounting).
SUBMITIT_LOGGER = "submitit"
SUBMITIT_OUT = "submitit_out"  # its stdout handler, as submitit's logging config names it
SUBMITIT_ONCE = OncePerText()
BELOW_WARNING = BelowWarning()


def quiet_submitit() -> None:
    """Each submitit warning once per process, on stderr only; idempotent."""
    logger = logging.getLogger(SUBMITIT_LOGGER)
    logger.addFilter(SUBMITIT_ONCE)
    if not logger.handlers:  # SUBMITIT_LOG_LEVEL=NOCONFIG: Hydra's handler is the only one
        return
    logger.propagate = False
    for handler in logger.handlers:
        if handler.name == SUBMITIT_OUT:
            handler.addFilter(BELOW_WARNING)


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


# A batch log's progress line at most this often, as LogProgress's between epochs (5 minutes).
PROGRESS_SECONDS = 300.0


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    from datetime import timedelta

    return str(timedelta(seconds=round(seconds)))


def eta(elapsed: float, start: float, now: float) -> float | None:
    """Seconds left if the rest goes as fast as ``start`` to ``now`` (fractions) did."""
    if now <= start:
        return None
    return elapsed * (1.0 - now) / (now - start)


def global_zero() -> bool:
    """True in global rank 0: by the process group once one is up (ddp_spawn's processes set
    no variable), else by ``rank_zero``."""
    dist = sys.modules.get("torch.distributed")  # never imported here: torch stays unloaded
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return rank_zero()


def bar_fits() -> bool:
    """True when stdout is a terminal that can take one more rich bar.

    rich >= 14.1 nests live displays (a bar inside Lightning's); rich 13 holds one and raises
    on a second.
    """
    if not getattr(sys.stdout, "isatty", lambda: False)():
        return False
    from rich import get_console

    console = get_console()
    return hasattr(console, "_live_stack") or getattr(console, "_live", None) is None


def waiting_line(
    what: str, done: int, total: int, unit: str, elapsed: float, final: bool = False
) -> str:
    """``what | done/total unit | rate | elapsed | ETA`` in the look of training's lines."""
    if not final and done == 0:
        return f"{what} | 0/{total:,} {unit} | started"
    rate = done / max(elapsed, 1e-9)
    left = "done" if final else f"ETA {clock(eta(elapsed, 0.0, done / total))}"
    speed = f"{rate:,.1f} {unit}/s"
    return f"{what} | {done:,}/{total:,} {unit} | {speed} | elapsed {clock(elapsed)} | {left}"


def track(
    steps: Any,
    what: str,
    total: int,
    unit: str = "images",
    per_step: int = 1,
    bar: bool = True,
    every: float = PROGRESS_SECONDS,
    say: Any = None,
) -> Any:
    """``steps``, with word of how far they got: a long wait must not look like a hang.

    A terminal gets a rich bar, then the final line; otherwise (a batch log, ``bar=False``, a
    terminal whose rich cannot nest a bar) a line at the start, every ``every`` seconds and at
    the end. Lines go to the ``genlab`` logger unless ``say`` takes them. Rank 0 only: every
    rank runs the sample-metric passes.

    Args:
        steps: an iterable; the generator yields its items.
        total: units of work in all; each step does ``per_step`` of them (the last may do less).
        say: a function taking each line (a one-shot tool that prints); default the logger.
    """
    import time

    if not global_zero():
        yield from steps
        return
    say = say or logging.getLogger("genlab").info
    start = time.monotonic()
    last = start
    if bar and bar_fits():
        from rich.progress import track as rich_track

        yield from rich_track(
            steps, description=what, total=-(-total // max(per_step, 1)), transient=True
        )
    else:
        say(waiting_line(what, 0, total, unit, 0.0))
        for i, step in enumerate(steps):
            yield step
            now = time.monotonic()
            done = min((i + 1) * per_step, total)
            if now - last >= every and done < total:
                say(waiting_line(what, done, total, unit, now - start))
                last = now
    say(waiting_line(what, total, total, unit, time.monotonic() - start, final=True))
