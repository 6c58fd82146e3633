"""The one exception type for bad user input, genlab's warning category, the type and choice
checks, and the wording of a library's error inside genlab's one line."""


class GenlabError(Exception):
    """Bad input (config value, file, checkpoint): the message is the whole story.

    Entry points print it as one line and exit non-zero, without a traceback. The message
    names the config key (``data.root``) or the file it is about. Raised in a DataLoader
    worker (a corrupt file met mid-training), torch re-raises it in the main process as
    ``type(error)("Caught X in DataLoader worker process 0.\nOriginal Traceback ...")``, whose
    first line names neither the file nor the fault: the original message, the traceback's last
    line, is recovered from it.
    """

    def __init__(self, message: str = "") -> None:
        if message.startswith("Caught ") and "Original Traceback" in message:
            prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
            lines = [line for line in message.splitlines() if line.startswith(prefix)]
            message = lines[-1].removeprefix(prefix) if lines else message
        super().__init__(message)


class GenlabWarning(UserWarning):
    """A warning about this run's input or numbers (a biased FID, a clamped KID subset).

    Entry points show it as one ``[genlab][WARNING]`` log line (``genlab.console``), without the
    file path of whichever library frame ``stacklevel`` lands in.
    """


def first_line(error: BaseException, limit: int = 200) -> str:
    """A library error's first line (its type when it has no message), cut to ``limit``."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def check_type(key: str, value: object, wanted: tuple[type, ...]) -> None:
    """Refuse a config value of the wrong type in one line naming the key and the type.

    Hydra hands ``data.batch_size=abc`` through as a string, which would otherwise fail later
    as a bare TypeError from a comparison. bool is no number here, and a float allows an int.
    """
    accepted = (*wanted, int) if float in wanted else wanted
    if isinstance(value, bool) and bool not in wanted or not isinstance(value, accepted):
        names = [NAMES[t] for t in wanted if t in NAMES]
        names += ["null"] if type(None) in wanted else []
        raise GenlabError(f"{key}={value!r} must be {' or '.join(names)}")


def check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    """Refuse ``value`` of config ``key`` unless it is one of ``choices``, in one line naming
    them: ``model.loss='x': use ns, hinge or wgan``."""
    if value not in choices:
        *others, last = choices
        names = f"{', '.join(others)} or {last}" if others else last
        raise GenlabError(f"{key}={value!r}: use {names}")
