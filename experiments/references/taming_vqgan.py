"""Reference outputs of taming-transformers' VQGAN networks and quantiser for tests/test_vq.py.

    G=/path/to/taming-transformers.git  # a clone's .git; the fixture used 3ba01b24 (HEAD)
    mkdir -p /tmp/t && git --git-dir=$G archive HEAD taming configs | tar -x -C /tmp/t
    python experiments/references/taming_vqgan.py /tmp/t $(git --git-dir=$G rev-parse HEAD)

Builds taming's ``Encoder``, ``Decoder`` (taming/modules/diffusionmodules/model.py, plus the
1x1 ``quant_conv`` / ``post_quant_conv`` that taming/models/vqgan.py's ``VQModel`` adds) at a
tiny width, fills their weights by ``fill_`` from a seed (the fixture stores the names, shapes
and sums instead of the weights, to stay small), and saves to
tests/fixtures/references/taming_vqgan.pt: fixed inputs and their outputs; ``VectorQuantizer2``'s
outputs, loss and gradients on z and the codebook for ``legacy=True`` and ``False``;
``VQLPIPSWithDiscriminator``'s losses (perceptual weight 0; taming's LPIPS is stubbed) with a
tiny ``NLayerDiscriminator`` (its weights stored: they are few); configs/custom_vqgan.yaml and
the parameter counts of its networks at full size. taming's module files are imported directly:
only torch, numpy and PyYAML are needed (einops is stubbed when it is not installed).
"""

import importlib.util
import sys
import types
from pathlib import Path

import torch
import yaml
from torch import nn

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "references" / "taming_vqgan.pt"
SEED = 0
# tiny: 32 channels (GroupNorm's 32 groups), one downsampling, attention at the 8 px level
TINY = {
    "ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (8,), "dropout": 0.0,
    "resolution": 16, "in_channels": 3, "out_ch": 3, "z_channels": 8, "double_z": False,
}  # fmt: skip
TINY_EMBED = 4  # VQModel's embed_dim: quant_conv maps z_channels to it
# configs/custom_vqgan.yaml (faceshq_vqgan.yaml and imagenet_vqgan.yaml share these networks)
CUSTOM = {
    "ch": 128, "ch_mult": (1, 1, 2, 2, 4), "num_res_blocks": 2, "attn_resolutions": (16,),
    "dropout": 0.0, "resolution": 256, "in_channels": 3, "out_ch": 3, "z_channels": 256,
    "double_z": False,
}  # fmt: skip
CUSTOM_EMBED, CUSTOM_CODES = 256, 1024


def fill_(state: dict[str, torch.Tensor], seed: int) -> None:
    """Deterministic weights, in place: in sorted-name order, N(0, 1 / fan_in) for weights of
    dim > 1, 1 + N(0, 0.1^2) for 1-d weights (GroupNorm gains), N(0, 0.1^2) for biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in sorted(state):
            t = state[name]
            r = torch.randn(t.shape, generator=g)
            if t.dim() > 1:
                t.copy_(r / (t[0].numel() ** 0.5))
            elif name.endswith("weight"):
                t.copy_(1 + 0.1 * r)
            else:
                t.copy_(0.1 * r)


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stub_lpips() -> None:
    """vqperceptual.py imports taming's LPIPS, which downloads VGG weights: perceptual_weight=0
    never calls it, so a placeholder stands in."""
    stub = types.ModuleType("taming.modules.losses.lpips")
    stub.LPIPS = nn.Identity
    sys.modules["taming.modules.losses.lpips"] = stub


def _stub_einops() -> None:
    try:
        import einops  # noqa: F401
    except ImportError:
        patterns = {
            "b c h w -> b h w c": lambda t: t.permute(0, 2, 3, 1),
            "b h w c -> b c h w": lambda t: t.permute(0, 3, 1, 2),
            "n d -> d n": lambda t: t.T,
        }
        stub = types.ModuleType("einops")
        stub.rearrange = lambda t, pattern: patterns[pattern](t)
        sys.modules["einops"] = stub


class Wrapped(nn.Module):
    """taming's Encoder + quant_conv, or post_quant_conv + Decoder, under taming's names."""

    def __init__(self, net: nn.Module, conv: nn.Conv2d, conv_name: str, first: bool) -> None:
        super().__init__()
        self.net, self.first = net, first
        setattr(self, conv_name, conv)
        self.conv_name = conv_name

    def forward(self, x):
        conv = getattr(self, self.conv_name)
        return self.net(conv(x)) if self.first else conv(self.net(x))

    def flat_state(self) -> dict[str, torch.Tensor]:
        """taming's Encoder/Decoder names with the 1x1 conv's beside them."""
        return {k.removeprefix("net."): v for k, v in self.state_dict().items()}


def nets(model, cfg: dict, embed: int) -> tuple[Wrapped, Wrapped]:
    z = cfg["z_channels"]
    enc = Wrapped(model.Encoder(**cfg), nn.Conv2d(z, embed, 1), "quant_conv", first=False)
    dec = Wrapped(model.Decoder(**cfg), nn.Conv2d(embed, z, 1), "post_quant_conv", first=True)
    return enc, dec


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(root: Path, commit: str) -> None:
    _stub_einops()
    sys.path.insert(0, str(root))  # the discriminator imports taming.modules.util
    model = _load(root / "taming/modules/diffusionmodules/model.py", "taming_model")
    quantize = _load(root / "taming/modules/vqvae/quantize.py", "taming_quantize")
    disc = _load(root / "taming/modules/discriminator/model.py", "taming_disc")
    _stub_lpips()
    perceptual = _load(root / "taming/modules/losses/vqperceptual.py", "taming_vqperceptual")

    torch.manual_seed(SEED)
    enc, dec = nets(model, TINY, TINY_EMBED)
    fill_(enc.flat_state(), SEED)
    fill_(dec.flat_state(), SEED + 1)
    g = torch.Generator().manual_seed(SEED + 2)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    q_in = torch.randn(2, TINY_EMBED, 8, 8, generator=g)
    with torch.no_grad():
        z, out = enc(x), dec(q_in)

    # the quantiser: codes spread like the vectors, so several codes are chosen
    num_codes, dim = 16, 8
    codebook = torch.randn(num_codes, dim, generator=g)
    zq_in = torch.randn(2, dim, 4, 4, generator=g)
    quant = {}
    for legacy in (True, False):
        q = quantize.VectorQuantizer2(num_codes, dim, beta=0.25, legacy=legacy)
        q.embedding.weight.data.copy_(codebook)
        zz = zq_in.clone().requires_grad_(True)
        z_q, loss, (_, _, idx) = q(zz)
        loss.backward()
        quant[legacy] = {
            "z_q": z_q.detach(), "codes": idx.view(2, 4, 4), "loss": loss.detach(),
            "grad_z": zz.grad.clone(), "grad_codebook": q.embedding.weight.grad.clone(),
        }  # fmt: skip

    # VQLPIPSWithDiscriminator (perceptual_weight 0) on a tiny NLayerDiscriminator; the
    # reconstructions come from a conv whose weight is the "last layer" of the adaptive weight
    loss = perceptual.VQLPIPSWithDiscriminator(
        disc_start=0, disc_weight=0.8, perceptual_weight=0.0, disc_ndf=8
    )
    loss.train()
    fill_(loss.discriminator.state_dict(), SEED + 3)
    last = nn.Conv2d(4, 3, 3, padding=1)
    fill_(last.state_dict(), SEED + 4)
    h = torch.randn(2, 4, 32, 32, generator=g)
    x32 = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    codebook_loss = torch.rand(2, generator=g)
    rec = last(h)
    with torch.no_grad():
        d_out = loss.discriminator(x32)
    ae_loss, ae_log = loss(codebook_loss, x32, rec, 0, global_step=1, last_layer=last.weight)
    d_loss, d_log = loss(codebook_loss, x32, rec, 1, global_step=1, last_layer=last.weight)
    vq_loss = {
        "disc_state": {k: v.clone() for k, v in loss.discriminator.state_dict().items()},
        "last_state": {k: v.clone() for k, v in last.state_dict().items()},
        "h": h, "x": x32, "codebook_loss": codebook_loss, "d_out": d_out,
        "loss": ae_loss.detach(), "d_weight": ae_log["train/d_weight"],
        "g_loss": ae_log["train/g_loss"], "nll_loss": ae_log["train/nll_loss"],
        "d_loss": d_loss.detach(), "disc_weight": 0.8,
    }  # fmt: skip

    full_enc, full_dec = nets(model, CUSTOM, CUSTOM_EMBED)
    # VQLPIPSWithDiscriminator's defaults: disc_in_channels 3, disc_num_layers 3, disc_ndf 64
    d = disc.NLayerDiscriminator(input_nc=3, n_layers=3, use_actnorm=False, ndf=64)
    ref = {
        "taming_commit": commit,
        "tiny": TINY, "tiny_embed": TINY_EMBED, "seed": SEED,
        "encoder_shapes": {k: tuple(v.shape) for k, v in enc.flat_state().items()},
        "decoder_shapes": {k: tuple(v.shape) for k, v in dec.flat_state().items()},
        "encoder_sums": {k: v.double().sum().item() for k, v in enc.flat_state().items()},
        "decoder_sums": {k: v.double().sum().item() for k, v in dec.flat_state().items()},
        "x": x, "z": z, "q_in": q_in, "out": out,
        "codebook": codebook, "zq_in": zq_in, "beta": 0.25, "quantizer": quant,
        "vqperceptual": vq_loss,
        "custom_config": yaml.safe_load((root / "configs/custom_vqgan.yaml").read_text()),
        "custom_params": {
            "encoder": count(full_enc), "decoder": count(full_dec),
            "codebook": CUSTOM_CODES * CUSTOM_EMBED, "discriminator": count(d),
        },
    }  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref, OUT)
    print(f"{OUT} ({OUT.stat().st_size} bytes), taming {commit}: {ref['custom_params']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "unknown")
