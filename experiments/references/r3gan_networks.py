"""Write tests/fixtures/references/r3gan_networks.pt from brownvc/R3GAN's own G and D.

Usage (R3GAN's repository extracted, e.g. ``git archive HEAD | tar -x -C /tmp/r3gan``):

    python experiments/references/r3gan_networks.py /tmp/r3gan [--commit SHA] [--out PATH]

Builds ``training/networks.py``'s ``Generator`` and ``Discriminator`` (the wrappers train.py
builds around ``R3GAN/Networks.py``) with ``FP16Stages=[]``, so every stage runs in float32, and
again on the same weights with their presets' FP16Stages (bfloat16 stages, which run on the
CPU): G's ``[-1, -2, -3]`` at 32 px as CIFAR10, ``[-1, -2, -3, -4]`` at 64 px as FFHQ-64, and
D's ``[x + len(FP16Stages) for x in FP16Stages]`` as train.py maps them; at a tiny width:
conditional at 32 px (four stages as the CIFAR10 preset), unconditional at 64 px (a fifth
stage of half the width and cardinality, as FFHQ-64, so the 1x1 transition convs count).
Their code runs unmodified. Two things stand in:

- ``R3GAN/Networks.py`` binds ``BiasedActivation``, ``InterpolativeUpsampler`` and
  ``InterpolativeDownsampler`` at import from FusedOperators.py / Resamplers.py, whose
  module-level aliases pick the CUDA classes (torch_utils' bias_act / upfirdn2d). Rebinding
  those three names in ``R3GAN.Networks`` to their ``*Reference`` classes before building
  selects their reference, non-CUDA activation and resamplers; the CUDA classes' CPU fallback
  is run on the same weights as a cross-check (printed, not saved).
- ``pkg_resources`` (gone with recent setuptools), which torch_utils/ops imports only for
  ``parse_version``: a stand-in module with ``packaging.version.parse`` when it is missing.

Weights that their init leaves at zero (the activations' biases, each residual branch's last
1x1 conv) are set to random values so that every weight counts. Saves, per case, their
state_dicts (their names, with the ``Model.`` prefix of the wrappers), the inputs (z, D's
images as float16, integer labels: their one-hot is ``F.one_hot(labels).float()``) and their
outputs in float32 and with the bfloat16 stages (G's in bfloat16, the dtype theirs returns);
tests/test_r3gan.py maps the weights into genlab's nets and compares.
"""

import argparse
import math
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

OUT = Path(__file__).resolve().parents[2] / "tests/fixtures/references/r3gan_networks.pt"
# (name, image size, classes, blocks per stage, batch): width 8, cardinality 2, expansion 2,
# z 16; the G embedding 8 (not z's size, to tell them apart), D's the width as their presets.
# One block per stage and a batch of 1 at 64 px keep the file under 400 KB.
CASES = [("cond32", 32, 5, 2, 2), ("uncond64", 64, 0, 1, 1)]
WIDTH, CARDINALITY, EXPANSION, Z_DIM, G_EMBED = 8, 2, 2, 16, 8


def import_reference(tree: Path) -> types.ModuleType:
    """Their training.networks, with R3GAN.Networks switched to the reference classes."""
    try:
        import pkg_resources  # noqa: F401, PLC0415
    except ImportError:
        from packaging.version import parse  # noqa: PLC0415

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
    sys.path.insert(0, str(tree))
    import R3GAN.FusedOperators as fused  # noqa: PLC0415 (the reference's own code)
    import R3GAN.Networks as networks  # noqa: PLC0415
    import R3GAN.Resamplers as resamplers  # noqa: PLC0415
    import training.networks  # noqa: PLC0415

    networks.BiasedActivation = fused.BiasedActivationReference
    networks.InterpolativeUpsampler = resamplers.InterpolativeUpsamplerReference
    networks.InterpolativeDownsampler = resamplers.InterpolativeDownsamplerReference
    return training.networks


def use_cuda_classes(tree: Path) -> None:
    """Back to the classes their aliases pick (bias_act / upfirdn2d, CPU fallback here)."""
    import R3GAN.FusedOperators as fused  # noqa: PLC0415
    import R3GAN.Networks as networks  # noqa: PLC0415
    import R3GAN.Resamplers as resamplers  # noqa: PLC0415

    networks.BiasedActivation = fused.BiasedActivation
    networks.InterpolativeUpsampler = resamplers.InterpolativeUpsampler
    networks.InterpolativeDownsampler = resamplers.InterpolativeDownsampler


def randomise(net: torch.nn.Module) -> None:
    """Random values where their init leaves zeros: biases and each branch's LinearLayer3."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".Bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif ".LinearLayer3." in name:
                p.normal_(0, 0.5 / math.sqrt(p[0].numel()))


def fp16_stages(size: int, d: bool) -> list[int]:
    """train.py's FP16Stages of the preset with this stage layout (CIFAR10 / FFHQ-64)."""
    g = [-1, -2, -3] if size == 32 else [-1, -2, -3, -4]
    return [x + len(g) for x in g] if d else g


def kwargs(size: int, classes: int, blocks: int, d: bool, bf16: bool = False) -> dict:
    """train.py's G_kwargs / D_kwargs at the tiny width (D's stage lists reversed, as theirs)."""
    stages = 4 if size == 32 else 5
    widths = [WIDTH] * 4 + [WIDTH // 2] * (stages - 4)
    cards = [CARDINALITY] * 4 + [CARDINALITY // 2] * (stages - 4)
    blocks = [blocks] * stages
    kw = dict(
        WidthPerStage=widths, CardinalityPerStage=cards, BlocksPerStage=blocks,
        ExpansionFactor=EXPANSION, c_dim=classes, img_resolution=size,
        FP16Stages=fp16_stages(size, d) if bf16 else [],
    )  # fmt: skip
    if d:
        kw.update(WidthPerStage=widths[::-1], CardinalityPerStage=cards[::-1])
        kw.update(BlocksPerStage=blocks[::-1])
        if classes:
            kw["ConditionEmbeddingDimension"] = widths[0]
    else:
        kw["NoiseDimension"] = Z_DIM
        if classes:
            kw["ConditionEmbeddingDimension"] = G_EMBED
    return kw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("r3gan", type=Path, help="the extracted R3GAN tree (holds R3GAN/)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--commit", help="R3GAN's commit, when the tree is not a git checkout")
    args = parser.parse_args()
    networks = import_reference(args.r3gan)
    cases, nets = {}, {}
    for n, (name, size, classes, blocks, batch) in enumerate(CASES):
        torch.manual_seed(n)
        g = networks.Generator(**kwargs(size, classes, blocks, d=False))
        d = networks.Discriminator(**kwargs(size, classes, blocks, d=True))
        randomise(g)
        randomise(d)
        z = torch.randn(batch, Z_DIM)
        x = torch.randn(batch, 3, size, size).half().float()  # saved as float16, exactly
        labels = torch.randint(max(classes, 1), (batch,))
        c = F.one_hot(labels, classes).float() if classes else None
        with torch.no_grad():
            g_out, d_out = g(z, c), d(x, c)  # (B, 3, H, W), (B,)
        assert g_out.dtype == d_out.dtype == torch.float32
        g16 = networks.Generator(**kwargs(size, classes, blocks, d=False, bf16=True))
        d16 = networks.Discriminator(**kwargs(size, classes, blocks, d=True, bf16=True))
        g16.load_state_dict(g.state_dict())
        d16.load_state_dict(d.state_dict())
        with torch.no_grad():
            g_bf16, d_bf16 = g16(z, c), d16(x, c)
        assert (g_bf16.dtype, d_bf16.dtype) == (torch.bfloat16, torch.float32)
        cases[name] = {
            "image_size": size, "num_classes": classes, "width": WIDTH,
            "cardinality": CARDINALITY, "blocks_per_stage": blocks, "expansion": EXPANSION,
            "latent_dim": Z_DIM, "g_embed_dim": G_EMBED,
            "g_state_dict": {k: v.clone() for k, v in g.state_dict().items()},
            "d_state_dict": {k: v.clone() for k, v in d.state_dict().items()},
            "z": z, "x": x.half(), "labels": labels, "g_out": g_out, "d_out": d_out,
            "g_fp16_stages": fp16_stages(size, False), "d_fp16_stages": fp16_stages(size, True),
            "g_out_bf16": g_bf16, "d_out_bf16": d_bf16,
        }  # fmt: skip
        nets[name] = (z, x, c, size, classes, blocks)
        print(f"{name}: G out std {g_out.std():.3f}, D out {[round(v, 4) for v in d_out.tolist()]}")
        gd, dd = (g_bf16.float() - g_out).abs().max(), (d_bf16 - d_out).abs().max()
        print(f"{name}: their bf16 stages move G by {gd:.2e}, D by {dd:.2e} (max |fp32 - bf16|)")
    use_cuda_classes(args.r3gan)
    for name, (z, x, c, size, classes, blocks) in nets.items():
        g = networks.Generator(**kwargs(size, classes, blocks, d=False))
        d = networks.Discriminator(**kwargs(size, classes, blocks, d=True))
        g.load_state_dict(cases[name]["g_state_dict"])
        d.load_state_dict(cases[name]["d_state_dict"])
        with torch.no_grad():
            dg = (g(z, c) - cases[name]["g_out"]).abs().max().item()
            dd = (d(x, c) - cases[name]["d_out"]).abs().max().item()
        print(f"{name}: their CUDA classes' CPU fallback differs by {dg:.2e} (G), {dd:.2e} (D)")
        g = networks.Generator(**kwargs(size, classes, blocks, d=False, bf16=True))
        d = networks.Discriminator(**kwargs(size, classes, blocks, d=True, bf16=True))
        g.load_state_dict(cases[name]["g_state_dict"])
        d.load_state_dict(cases[name]["d_state_dict"])
        with torch.no_grad():
            dg = (g(z, c).float() - cases[name]["g_out_bf16"].float()).abs().max().item()
            dd = (d(x, c) - cases[name]["d_out_bf16"]).abs().max().item()
        print(f"{name}: with bf16 stages, by {dg:.2e} (G), {dd:.2e} (D)")
    commit = (
        args.commit
        or subprocess.run(
            ["git", "-C", str(args.r3gan), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"r3gan_commit": commit or None, "cases": cases}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
