"""Write tests/fixtures/references/biggan_d_studiogan.pt from PyTorch-StudioGAN's own BigGAN D.

Usage (StudioGAN's repository extracted, e.g. ``git archive HEAD src | tar -x -C /tmp/studiogan``):

    python experiments/references/biggan_d_studiogan.py /tmp/studiogan [--commit SHA] [--out PATH]

Builds ``src/models/big_resnet.py``'s ``Discriminator`` with the modules ``src/config.py``'s
``define_modules`` picks for ``CIFAR10/BigGAN.yaml`` (``apply_d_sn: True``, ``d_act_fn: ReLU``,
i.e. ``nn.ReLU(inplace=True)``) at a tiny width, class-conditional (``d_cond_mtd: PD``) and
unconditional (``W/O``), at 32 and 64 px. Their code runs unmodified; the only stand-in is
``utils.misc``, whose import pulls in seaborn, matplotlib and their training loop: the stand-in
holds ``misc.dummy_context_mgr``, the one name the D's forward uses, compiled from their source.
Biases and the attention gain (zero at init) are set to random values so that every weight
counts, and train-mode passes run the power iteration until sigma settles. Saves, per case,
their state_dict (their names: old-style spectral norm's ``weight_orig``/``weight_u``/
``weight_v``), the input images (float16) and labels, and their eval-mode ``adv_output``;
tests/test_biggan.py maps the weights into genlab's D and compares.
"""

import argparse
import ast
import subprocess
import sys
import types
from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).resolve().parents[2] / "tests/fixtures/references/biggan_d_studiogan.pt"
# (name, image size, d_conv_dim, classes, attn_d_loc): at 32 px attention after the first block
# as CIFAR10/BigGAN.yaml; at 64 px after the third (8x8, genlab's attention=8). The widths give
# attention the 8 channels it needs and keep the file small.
CASES = [
    ("cond32", 32, 4, 10, [1]),
    ("uncond32", 32, 4, 0, [1]),
    ("cond64", 64, 2, 5, [3]),
]
BATCH = 2
POWER_ITERATIONS = 30  # train-mode passes, one power iteration each: sigma near its value


def studiogan_misc(src: Path) -> types.ModuleType:
    """``utils.misc`` with only their ``dummy_context_mgr`` (compiled from misc.py itself)."""
    tree = ast.parse((src / "utils/misc.py").read_text())
    (cls,) = (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "dummy_context_mgr")
    misc = types.ModuleType("utils.misc")
    exec(
        compile(ast.Module([cls], type_ignores=[]), str(src / "utils/misc.py"), "exec"),
        misc.__dict__,
    )
    return misc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studiogan", type=Path, help="the extracted StudioGAN tree (holds src/)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--commit", help="StudioGAN's commit, when the tree is not a git checkout")
    args = parser.parse_args()
    src = args.studiogan / "src"
    sys.path.insert(0, str(src))
    import utils  # their src/utils, a namespace package

    utils.misc = sys.modules["utils.misc"] = studiogan_misc(src)
    import utils.ops as ops
    from models import big_resnet

    # config.py's define_modules with apply_d_sn: True and d_act_fn: "ReLU"
    modules = types.SimpleNamespace(
        d_conv2d=ops.snconv2d, d_deconv2d=ops.sndeconv2d, d_linear=ops.snlinear,
        d_embedding=ops.sn_embedding, d_act_fn=nn.ReLU(inplace=True),
    )  # fmt: skip
    model = types.SimpleNamespace(info_type="N/A")
    cases = {}
    for n, (name, size, width, classes, attn) in enumerate(CASES):
        torch.manual_seed(n)
        d = big_resnet.Discriminator(
            img_size=size, d_conv_dim=width, apply_d_sn=True, apply_attn=True, attn_d_loc=attn,
            d_cond_mtd="PD" if classes else "W/O", aux_cls_type="W/O", d_embed_dim="N/A",
            normalize_d_embed=False, num_classes=classes, d_init="ortho", d_depth="N/A",
            mixed_precision=False, MODULES=modules, MODEL=model,
        )  # fmt: skip
        with torch.no_grad():
            for pname, p in d.named_parameters():
                if pname.endswith("bias") or pname.endswith("sigma"):
                    p.copy_(0.5 * torch.randn_like(p))
        x = torch.randn(BATCH, 3, size, size).half().float()  # saved as float16, exactly
        labels = (
            torch.randint(classes, (BATCH,)) if classes else torch.zeros(BATCH, dtype=torch.long)
        )
        with torch.no_grad():
            for _ in range(POWER_ITERATIONS):  # fresh u and v would give sigma near 0
                d(x.clone(), labels)
            d.eval()  # spectral norm uses the stored u and v, no power iteration
            out = d(x.clone(), labels)["adv_output"]  # (B,)
        cases[name] = {
            "image_size": size, "base_channels": width, "num_classes": classes,
            "state_dict": {k: v.clone() for k, v in d.state_dict().items()},
            "x": x.half(), "labels": labels, "out": out,
        }  # fmt: skip
        print(name, "out", [round(v, 4) for v in out.tolist()])
    commit = (
        args.commit
        or subprocess.run(
            ["git", "-C", str(args.studiogan), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"studiogan_commit": commit or None, "cases": cases}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
