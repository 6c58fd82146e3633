"""PacGAN packing (model.pack): D's input channels, the batch check, penalties per packed input."""

import pytest
import torch

from genlab import losses
from genlab.errors import GenlabError
from genlab.training import build
from tests.conftest import fit_built
from tests.zoo_checks import limit

QUIET = ["data=synthetic", "callbacks=none", "metrics=none"]
NARROW = ["model.generator.base_channels=8", "model.discriminator.base_channels=8"]


class InputProbe:
    """Record the shape of every input the discriminator receives."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.shapes: list[tuple[int, ...]] = []
        net.register_forward_pre_hook(lambda module, args: self.shapes.append(args[0].shape))


def one_batch(cfg) -> dict:
    return build(limit(cfg, 1, 1))


@pytest.mark.parametrize(
    ("model", "channels", "pack", "extra"),
    [
        ("gan", 1, 2, []),
        ("gan_mlp", 3, 4, ["data.image_size=16"]),
        ("sngan", 3, 2, ["model.n_critic=1", *NARROW]),
    ],
)
def test_discriminator_sees_m_times_c_channels(model, channels, pack, extra, cfg_tiny):
    cfg = cfg_tiny(
        f"model={model}", *QUIET, f"data.channels={channels}", f"model.pack={pack}",
        "model.r1_gamma=1", "model.gp_weight=1", *extra,
    )  # fmt: skip
    assert cfg.model.discriminator.channels == pack * channels  # follows model.pack
    objs = one_batch(cfg)
    probe = InputProbe(objs["model"].discriminator)
    fit_built(objs)
    batch = cfg.data.batch_size
    size = cfg.data.image_size
    # D step: real, fake, the GP mix; G step: fake. All packed: B/m inputs of m*C channels.
    assert probe.shapes == [(batch // pack, pack * channels, size, size)] * 4
    logged = objs["trainer"].callback_metrics
    assert all(torch.isfinite(logged[k]) for k in ("train/r1", "train/gp", "train/g_loss"))


def test_pack_stacks_consecutive_images_along_channels(cfg_tiny):
    module = one_batch(cfg_tiny("model=gan", *QUIET, "model.pack=2"))["model"]
    x = torch.arange(4 * 1 * 2 * 2, dtype=torch.float).view(4, 1, 2, 2)  # (B=4, C=1, 2, 2)
    packed = module._pack(x)
    assert packed.shape == (2, 2, 2, 2)
    assert torch.equal(packed[0, 0], x[0, 0]) and torch.equal(packed[0, 1], x[1, 0])
    assert torch.equal(packed[1, 0], x[2, 0]) and torch.equal(packed[1, 1], x[3, 0])


def test_batch_size_the_pack_does_not_divide_is_one_line_error(cfg_tiny):
    objs = one_batch(cfg_tiny("model=gan", *QUIET, "model.pack=3", "data.batch_size=16"))
    with pytest.raises(GenlabError, match=r"model.pack=3 .* data.batch_size") as err:
        fit_built(objs)
    assert "\n" not in str(err.value)


def test_bad_pack_values_name_the_key(cfg_tiny):
    # resolving D's channels refuses it first (the CLI prints that one line)
    with pytest.raises(Exception, match="model.pack=0 must be an integer >= 1"):
        build(cfg_tiny("model=gan_mlp", *QUIET, "model.pack=0"))
    labels = ["+model.generator.num_classes=4", "+model.discriminator.num_classes=4"]
    with pytest.raises(GenlabError, match="model.pack=2 needs an unconditional"):
        build(cfg_tiny("model=gan_mlp", *QUIET, "model.pack=2", *labels))


def test_r1_counts_each_packed_input_once():
    """A linear D on packed inputs: grad of each logit is w, so R1 = ||w||^2 per packed input.

    Per image (the old flatten(1)) it would be ||w||^2 / m."""
    m, c = 2, 3
    w = torch.randn(m * c, 4, 4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, c, 4, 4, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    logits = (x.reshape(3, m * c, 4, 4) * w).sum((1, 2, 3))  # (3,)
    r1 = losses.r1_penalty(logits, x)
    assert r1.item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)
