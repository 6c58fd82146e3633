"""The GAN module's options, checked before it is built: one line naming the model key for each
bad value or combination (genlab.models.gan builds from what passes)."""

from torch import nn

from genlab.augment import ADA
from genlab.errors import GenlabError, check_choice
from genlab.losses import GANLoss
from genlab.models.ema import EMAStats
from genlab.models.loop import NONFINITE
from genlab.models.ramp import Ramp


def check_stylegan2_options(generator: nn.Module, **options: float) -> None:
    """StyleGAN2's lazy R1, path length and style mixing: values, and the generator they need."""
    for key in ("r1_interval", "pl_interval", "pl_batch_shrink"):
        if not (isinstance(options[key], int) and options[key] >= 1):
            raise GenlabError(f"model.{key}={options[key]} must be an integer >= 1")
    for key in ("pl_weight", "pl_decay", "style_mixing"):
        if not options[key] >= 0 or (key != "pl_weight" and options[key] > 1):
            bound = "must be >= 0" if key == "pl_weight" else "must be in [0, 1]"
            raise GenlabError(f"model.{key}={options[key]} {bound}")
        if key != "pl_decay" and options[key] and not hasattr(generator, "synthesis"):
            raise GenlabError(
                f"model.{key}={options[key]} needs a generator with mapping and synthesis "
                f"(StyleGAN2Generator); {type(generator).__name__} has none"
            )


def checked_options(
    generator: nn.Module,
    discriminator: nn.Module,
    scheduler_g: object,
    scheduler_d: object,
    *,
    loss: str,
    n_critic: int,
    gp_weight: float,
    r1_gamma: float,
    r2_gamma: float,
    ortho_reg: float,
    pack: int,
    ramp: dict | None,
    r1_interval: int,
    pl_weight: float,
    pl_interval: int,
    pl_decay: float,
    pl_batch_shrink: int,
    style_mixing: float,
    diffaugment: str,
    ada: dict | None,
    ema_decay: float,
    ema_stats: str,
    fake_labels: str,
    lazy_step: str,
    g_real: str,
    grad_clip: float,
    nonfinite: str,
) -> tuple[Ramp, ADA | None]:
    """GAN's constructor options checked in one place; its schedules (``model.ramp``) and its
    ADA pipeline (None when off) built from them."""
    check_choice("model.loss", loss, GANLoss.__args__)
    if n_critic < 1:
        raise GenlabError(f"model.n_critic={n_critic} must be >= 1")
    if gp_weight < 0 or r1_gamma < 0:
        raise GenlabError("model.gp_weight and model.r1_gamma must be >= 0")
    if not (r2_gamma >= 0 and ortho_reg >= 0):
        raise GenlabError("model.r2_gamma and model.ortho_reg must be >= 0")
    if not (isinstance(pack, int) and pack >= 1):
        raise GenlabError(f"model.pack={pack} must be an integer >= 1 (1 = no packing)")
    if pack > 1 and discriminator.num_classes:
        raise GenlabError(f"model.pack={pack} needs an unconditional discriminator (PacGAN)")
    ramp_ = Ramp(ramp)
    if "lr" in ramp_ and (scheduler_g or scheduler_d):
        raise GenlabError("model.ramp.lr and model.scheduler_g/scheduler_d are exclusive")
    check_stylegan2_options(
        generator, r1_interval=r1_interval, pl_weight=pl_weight, pl_interval=pl_interval,
        pl_decay=pl_decay, pl_batch_shrink=pl_batch_shrink, style_mixing=style_mixing,
    )  # fmt: skip
    check_choice("model.nonfinite", nonfinite, NONFINITE)
    if not 0.0 <= ema_decay < 1.0:
        raise GenlabError(f"model.ema_decay={ema_decay} must be in [0, 1)")
    check_choice("model.g_real", g_real, ("shared", "own"))
    if g_real == "own" and loss != "rpgan":
        raise GenlabError(
            f"model.g_real=own gives the G step reals of its own, which only model.loss=rpgan "
            f"reads (model.loss={loss!r})"
        )
    check_choice("model.lazy_step", lazy_step, ("joint", "separate"))
    check_choice("model.fake_labels", fake_labels, ("batch", "uniform", "dataset"))
    check_choice("model.ema_stats", ema_stats, EMAStats.__args__)
    if not grad_clip >= 0:
        raise GenlabError(f"model.grad_clip={grad_clip} must be >= 0 (0 = off)")
    # ADA is on with a p, a target (the test StyleGAN2-ADA builds its pipeline on) or a
    # ramped p (R3GAN's schedule)
    ramped_p = "ada_p" in ramp_
    if ramped_p and (ada is None or ada.get("target") is not None):
        raise GenlabError(
            "model.ramp.ada_p schedules p, model.ada.target adapts it: set "
            "model.ada.target=null to ramp p"
        )
    if ramped_p and not all(0 <= v <= 1 for v in ramp_.values["ada_p"]):
        raise GenlabError(f"model.ramp.ada_p={list(ramp_.values['ada_p'])} must be in [0, 1]")
    ada_on = ada is not None and bool(ada.get("p") or ada.get("target") is not None or ramped_p)
    if ada_on and diffaugment:
        raise GenlabError(
            f"model.ada and model.diffaugment={diffaugment!r} are exclusive: set "
            "model.diffaugment='' or turn ADA off (model.ada.p=0 model.ada.target=null)"
        )
    return ramp_, (ADA(**ada) if ada_on else None)
