"""Write tests/fixtures/references/ada_stylegan2.pt: AugmentPipe's outputs on fixed images.

Runs NVlabs/stylegan2-ada-pytorch's ``training/augment.py`` unmodified (its pure-PyTorch
upfirdn2d path on a CPU) with ``debug_percentile``, which fixes every transform's parameter as a
function of one number q. tests/test_ada.py rebuilds the same parameters from q and checks that
genlab's ADA gives the same images. Usage, with the reference's tree extracted somewhere:

    git clone https://github.com/NVlabs/stylegan2-ada-pytorch /tmp/sg2ada
    python experiments/references/ada_stylegan2.py /tmp/sg2ada [COMMIT]

COMMIT names the reference's commit where the tree is not a git checkout.
"""

import subprocess
import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[2] / "tests/fixtures/references/ada_stylegan2.pt"
PERCENTILES = (0.2, 0.6, 0.9)
# one pipeline per transform, then the groups together (AugmentPipe's keyword arguments)
CASES = {
    name: {name: 1} for name in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
}
CASES["bg"] = dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1)
CASES["bgc"] = dict(CASES["bg"], brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
CASES["bgco"] = dict(CASES["bgc"], cutout=1)


def main(repo: Path, commit: str | None = None) -> None:
    sys.path.insert(0, str(repo))
    from training.augment import AugmentPipe  # noqa: PLC0415 (the reference's own code)

    g = torch.Generator().manual_seed(0)
    images = {
        "rgb": torch.rand(2, 3, 16, 16, generator=g) * 2 - 1,
        "grey": torch.rand(2, 1, 16, 16, generator=g) * 2 - 1,
    }
    outputs = {}
    for name, kwargs in CASES.items():
        pipe = AugmentPipe(**kwargs)
        pipe.p.fill_(1.0)
        for kind, x in images.items():
            for q in PERCENTILES:
                outputs[name, kind, q] = pipe(x.clone(), debug_percentile=q)
    commit = (
        commit
        or subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    stacked = {
        (name, kind): torch.stack([outputs[name, kind, q] for q in PERCENTILES])
        for name in CASES
        for kind in images
    }  # (len(PERCENTILES), B, C, H, W) each
    torch.save({"images": images, "percentiles": PERCENTILES, "outputs": stacked,
                "commit": commit}, OUT)  # fmt: skip
    print(f"wrote {OUT} ({len(outputs)} outputs, reference commit {commit or 'unknown'})")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
