"""Write tests/fixtures/references/stylegan2_networks.pt from StyleGAN2-ADA's own G and D.

Builds NVlabs/stylegan2-ada-pytorch's ``training/networks.py`` ``Generator`` and
``Discriminator`` at a tiny size, fp32 (``num_fp16_res=0``, no ``conv_clamp``), and runs them
unmodified on a CPU (their ops fall back to their pure-PyTorch reference implementations):

- ``cond32``: 32 px RGB, ``c_dim=10``, ``train.py``'s ``cifar`` shape (2 mapping layers in G,
  D ``architecture='orig'``), mbstd groups of 4 (genlab's default);
- ``uncond16``: 16 px greyscale, unconditional, the residual D (their default).

The channel widths halve at each resolution above 8 px (32 px case) or 4 px (16 px case), so
that blocks change width (16 channels at 4 px, 4 at the largest). Every bias and noise
strength (zero at init, or one for the affines) gets a random offset and ``w_avg`` a random
value, so that every weight counts.
Saves, per case, their state_dicts (their names; no filter or ``noise_const`` buffers), the
inputs (z, integer labels, D's images in float16) and outputs: the mapping's ws at psi 1 and
0.7, G's images (``noise_mode='random'`` after ``torch.manual_seed(noise_seed)``, fused and
unfused modulated conv) and D's logits.

The same weights then run in the two settings of their ``train.py`` that fp32 leaves out, on the
first example of G's batch only (the fixture stays small) and on D's whole batch:

- ``clamp``: fp32 with ``conv_clamp=0.5``, small enough that every layer's clamp bites
  (``img_clamp``, unfused modconv, saved in float32; ``logits_clamp``);
- ``fp16``: ``num_fp16_res=4``, ``conv_clamp=256``, their default: float16 in every block from
  8 px up, run on a CPU (PyTorch's CPU float16 convolutions), the 4 px block and D's epilogue
  in float32 (``img_fp16_unfused`` in float32, ``img_fp16_fused`` saved as float16;
  ``logits_fp16``).
tests/test_stylegan2.py maps the weights into genlab's nets and compares. Usage, with the
reference's tree extracted somewhere:

    python experiments/references/stylegan2_networks.py /tmp/sg2ada [COMMIT]

COMMIT names the reference's commit where the tree is not a git checkout.
"""

import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

OUT = Path(__file__).resolve().parents[2] / "tests/fixtures/references/stylegan2_networks.pt"
# (name, image size, channels, classes, D architecture, channel_base, channel_max)
CASES = [
    ("cond32", 32, 3, 10, "orig", 128, 16),
    ("uncond16", 16, 1, 0, "resnet", 64, 16),
]
Z_DIM = W_DIM = 16
G_MAPPING_LAYERS = 2  # the cifar config's map=2; D's label mapping keeps its default of 8
MBSTD_GROUP = 4
G_BATCH, D_BATCH = 2, 8  # D: two mbstd groups
NOISE_SEED = 123
# (output suffix, num_fp16_res, conv_clamp): the settings run on the same weights
VARIANTS = [("clamp", 0, 0.5), ("fp16", 4, 256)]


def randomise(net: torch.nn.Module) -> None:
    """Random offsets on biases (scaled by the layer's bias gain) and noise strengths."""
    with torch.no_grad():
        for module in net.modules():
            gain = getattr(module, "bias_gain", 1.0)  # the mapping's lr multiplier of 0.01
            for name, p in module.named_parameters(recurse=False):
                if name == "bias":
                    p.add_(0.5 * torch.randn_like(p) / gain)
                elif name == "noise_strength":
                    p.copy_(0.5 * torch.randn_like(p))


def weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict without the buffers that hold no weights: the fixed [1, 3, 3, 1]
    ``resample_filter`` and ``noise_const`` (used by ``noise_mode='const'`` only)."""
    return {
        k: v.clone()
        for k, v in net.state_dict().items()
        if not k.endswith(("resample_filter", "noise_const"))
    }


def nets(case: tuple, num_fp16_res: int = 0, conv_clamp: float | None = None) -> tuple:
    """Their G and D (eval) for a CASES row."""
    from training.networks import Discriminator, Generator  # noqa: PLC0415 (their own code)

    _, size, channels, classes, arch, base, cmax = case
    g = Generator(
        Z_DIM, classes, W_DIM, size, channels,
        mapping_kwargs=dict(num_layers=G_MAPPING_LAYERS),
        synthesis_kwargs=dict(channel_base=base, channel_max=cmax, num_fp16_res=num_fp16_res,
                              conv_clamp=conv_clamp),
    ).eval()  # fmt: skip
    d = Discriminator(
        classes, size, channels, architecture=arch, channel_base=base, channel_max=cmax,
        num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
        epilogue_kwargs=dict(mbstd_group_size=MBSTD_GROUP),
    ).eval()  # fmt: skip
    return g, d


def main(repo: Path, commit: str | None = None) -> None:
    sys.path.insert(0, str(repo))

    cases = {}
    for n, (name, size, channels, classes, arch, base, cmax) in enumerate(CASES):
        torch.manual_seed(n)
        g, d = nets(CASES[n])
        randomise(g)
        randomise(d)
        with torch.no_grad():
            g.mapping.w_avg.copy_(torch.randn_like(g.mapping.w_avg))
        z = torch.randn(G_BATCH, Z_DIM)
        g_labels = torch.randint(max(classes, 1), (G_BATCH,))
        d_labels = torch.randint(max(classes, 1), (D_BATCH,))
        x = torch.randn(D_BATCH, channels, size, size).half().float()  # saved as float16, exactly

        def onehot(labels: torch.Tensor, classes: int = classes) -> torch.Tensor | None:
            return F.one_hot(labels, classes).float() if classes else None

        out = {}
        with torch.no_grad():
            out["ws"] = g.mapping(z, onehot(g_labels))  # (B, num_ws, w_dim)
            out["ws_psi0.7"] = g.mapping(z, onehot(g_labels), truncation_psi=0.7)
            for fused in (True, False):
                torch.manual_seed(NOISE_SEED)
                out["img_fused" if fused else "img_unfused"] = g(
                    z, onehot(g_labels), noise_mode="random", fused_modconv=fused
                )  # (B, C, H, W)
            out["logits"] = d(x, onehot(d_labels)).squeeze(1)  # (B,)
            for suffix, num_fp16_res, conv_clamp in VARIANTS:
                g2, d2 = nets(CASES[n], num_fp16_res, conv_clamp)
                g2.load_state_dict(g.state_dict())
                d2.load_state_dict(d.state_dict())
                for fused in (True, False) if num_fp16_res else (False,):
                    torch.manual_seed(NOISE_SEED)
                    img = g2(z[:1], onehot(g_labels[:1]), noise_mode="random", fused_modconv=fused)
                    if num_fp16_res:  # the fused image in float16: the fixture stays small
                        key = f"img_{suffix}_{'fused' if fused else 'unfused'}"
                        out[key] = img.half() if fused else img
                    else:
                        out[f"img_{suffix}"] = img
                out[f"logits_{suffix}"] = d2(x, onehot(d_labels)).squeeze(1)
        cases[name] = {
            "image_size": size, "channels": channels, "num_classes": classes,
            "architecture": arch, "channel_base": base, "channel_max": cmax,
            "g_state_dict": weights(g), "d_state_dict": weights(d),
            "z": z, "g_labels": g_labels, "d_labels": d_labels, "x": x.half(), **out,
        }  # fmt: skip
        print(name, {k: round(v.abs().max().item(), 3) for k, v in out.items()})
        with torch.no_grad():  # the fp32 image of G's first example, for the printout only
            torch.manual_seed(NOISE_SEED)
            img = g(z[:1], onehot(g_labels[:1]), noise_mode="random", fused_modconv=False)
        for key in ("img_fp16_fused", "img_fp16_unfused", "img_clamp"):  # what each changes
            diff = (out[key].float() - img).abs().max().item()
            print(f"  {key} vs fp32: max |diff| {diff:.4g}")
        for key in ("logits_fp16", "logits_clamp"):
            print(f"  {key} vs fp32: max |diff| {(out[key] - out['logits']).abs().max():.4g}")
    commit = (
        commit
        or subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    settings = dict(z_dim=Z_DIM, w_dim=W_DIM, g_mapping_layers=G_MAPPING_LAYERS,
                    mbstd_group_size=MBSTD_GROUP, noise_seed=NOISE_SEED,
                    variants=VARIANTS)  # fmt: skip
    torch.save({"commit": commit or None, "settings": settings, "cases": cases}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, reference commit {commit or 'unknown'})")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
