"""The one exception type for bad user input."""


class GenlabError(Exception):
    """Bad input (config value, file, checkpoint): the message is the whole story.

    Entry points print it as one line and exit non-zero, without a traceback. The message
    names the config key (``data.root``) or the file it is about.
    """


def finite_or_skip(module, loss, name: str, policy: str) -> bool:
    """True when ``loss`` is finite on every rank; else False ("skip") or GenlabError ("stop").

    ``policy="off"`` skips the check.

    One host sync per step: the price of stopping at the step a loss diverges, before NaNs
    spread into every weight and the next checkpoint. Ranks decide together, so under DDP all
    of them skip or stop at the same step instead of hanging in the next all-reduce.
    """
    import torch

    if policy == "off":  # no check, no host sync: the fastest step
        return True
    finite = bool(torch.isfinite(loss.detach()).all())
    trainer = module.trainer
    finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
    if finite:
        return True
    if policy == "skip":
        return False
    value = float(loss.detach())
    raise GenlabError(
        f"non-finite {name}={value} at step {trainer.global_step}; training stopped with the "
        "last checkpoint untouched (lower the learning rate, or set model.nonfinite=skip)"
    )


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
