"""genlab-sample: interpolation paths, grid layouts, and the console script end to end."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from genlab.config import CONFIG_DIR
from genlab.sampling import class_rows, interpolations, lerp, reconstruction_rows, sample, slerp
from tests.conftest import train_checkpoint

TINY_TRAIN = ["debug=tiny", "logger=csv", "callbacks=none", "metrics=none", "data=synthetic"]


def test_lerp_and_slerp_end_points():
    z0, z1 = torch.randn(2, 3, 16)
    t = torch.linspace(0, 1, 5)
    for path in (lerp, slerp):
        out = path(z0, z1, t)  # (B, T, Z)
        assert out.shape == (3, 5, 16)
        assert torch.allclose(out[:, 0], z0, atol=1e-5)
        assert torch.allclose(out[:, -1], z1, atol=1e-5)


def test_slerp_keeps_the_norm_lerp_shrinks_it():
    z0, z1 = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    t = torch.linspace(0, 1, 9)
    assert torch.allclose(slerp(z0, z1, t).norm(dim=-1), torch.full((1, 9), 3.0))
    assert lerp(z0, z1, t)[0, 4].norm() == pytest.approx(3 / math.sqrt(2))
    # constant angular speed: the midpoint lies on the bisector
    assert torch.allclose(slerp(z0, z1, t)[0, 4], torch.full((2,), 3 / math.sqrt(2)))


def test_slerp_of_parallel_points_is_finite():
    z = torch.ones(2, 4)
    out = slerp(z, 2 * z, torch.linspace(0, 1, 3))
    assert torch.isfinite(out).all()
    assert torch.allclose(out, lerp(z, 2 * z, torch.linspace(0, 1, 3)))


class Negate(torch.nn.Module):
    """Stands in for a VAE whose reconstruction of x is -x."""

    def reconstruct(self, x, labels=None):
        return -x


def test_reconstruction_rows_alternate_inputs_and_outputs():
    x = torch.rand(10, 1, 4, 4)
    rows = reconstruction_rows(Negate(), x, torch.zeros(10, dtype=torch.long), nrow=4)
    assert rows.shape == (16, 1, 4, 4)  # 2 full rows of inputs, each with its reconstructions
    assert torch.equal(rows[:4], x[:4]) and torch.equal(rows[4:8], -x[:4])
    assert torch.equal(rows[8:12], x[4:8]) and torch.equal(rows[12:], -x[4:8])


class LabelPainter(torch.nn.Module):
    """Stands in for a conditional GAN: image = its label everywhere, plus z[0] in pixel 0."""

    latent_dim, num_classes, device = 3, 5, torch.device("cpu")

    def sampling_generator(self, z, labels):
        images = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
        images[:, 0, 0, 0] += z[:, 0]
        return images

    def sample(self, n, labels):
        return self.sampling_generator(torch.zeros(n, self.latent_dim), labels)


def test_class_rows_one_class_per_row():
    rows = class_rows(LabelPainter(), per_class=3)[:, 0, 1, 1]  # (K * 3,) the painted labels
    assert rows.tolist() == [k for k in range(5) for _ in range(3)]


def test_interpolation_strips_share_end_points_and_keep_one_class():
    torch.manual_seed(0)
    strips = interpolations(LabelPainter(), count=4, steps=6)
    lerped, slerped = (strips[k].view(4, 6, 1, 2, 2) for k in ("lerp", "slerp"))
    for strip in (lerped, slerped):
        labels = strip[:, :, 0, 1, 1]  # (count, steps)
        assert torch.all(labels == labels[:, :1])  # one class along each strip
    assert torch.allclose(lerped[:, 0], slerped[:, 0]) and torch.allclose(
        lerped[:, -1], slerped[:, -1]
    )
    assert not torch.allclose(lerped[:, 3], slerped[:, 3])  # different paths in between


def _checkpoint(tmp_path: Path, model: str, *extra: str) -> Path:
    return train_checkpoint(tmp_path, model, *TINY_TRAIN[3:], f"model={model}", *extra)


def _sample_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name="sample", overrides=list(overrides))


def test_same_seed_same_images(tmp_path):
    ckpt = _checkpoint(tmp_path, "gan_mlp")
    pngs = {}
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = _sample_cfg(f"ckpt_path={ckpt}", f"output_dir={tmp_path / run}", f"seed={seed}")
        paths = sample(cfg)
        pngs[run] = {p.name: np.asarray(Image.open(p)) for p in paths}
    assert set(pngs["a"]) == {"samples.png", "interpolation_lerp.png", "interpolation_slerp.png"}
    assert all(np.array_equal(pngs["a"][k], pngs["b"][k]) for k in pngs["a"])
    assert not np.array_equal(pngs["a"]["samples.png"], pngs["c"]["samples.png"])


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.height, image.width


def _grid(rows: int, cols: int, side: int = 32) -> tuple[int, int]:
    """Pixel size of a make_grid of rows x cols images with padding 2."""
    return rows * (side + 2) + 2, cols * (side + 2) + 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "extra", "expected"),
    [
        (
            "cvae",
            [],
            {
                "samples.png": _grid(3, 4),
                "interpolation_lerp.png": _grid(3, 5),
                "interpolation_slerp.png": _grid(3, 5),
                "classes.png": _grid(4, 4),  # one row per class of the synthetic set
                "reconstructions.png": _grid(8, 4),  # 16 inputs, each row with its outputs
            },
        ),
        (
            "cgan_pd",
            ["model.generator.base_channels=8", "model.discriminator.base_channels=8"],
            {
                "samples.png": _grid(3, 4),
                "interpolation_lerp.png": _grid(3, 5),
                "interpolation_slerp.png": _grid(3, 5),
                "classes.png": _grid(4, 4),
            },
        ),
    ],
    ids=["cvae", "cgan_pd"],
)
def test_genlab_sample_writes_every_promised_image(model, extra, expected, run_cli, tmp_path):
    ckpt = _checkpoint(tmp_path, model, *extra)
    out = tmp_path / "grids"
    proc = run_cli(
        "genlab-sample", f"ckpt_path={ckpt}", f"hydra.run.dir={out}", "num_samples=12", "nrow=4",
        "interpolation.count=3", "interpolation.steps=5",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in out.glob("*.png")} == set(expected)
    for name, size in expected.items():
        assert _size(out / name) == size, name
        pixels = np.asarray(Image.open(out / name))
        assert pixels.std() > 0, name  # not a blank image


@pytest.mark.parametrize(
    ("args", "named"),
    [([], "ckpt_path"), (["ckpt_path=/nonexistent/last.ckpt"], "/nonexistent/last.ckpt")],
)
def test_bad_input_is_one_line(args, named, run_cli, tmp_path):
    proc = run_cli("genlab-sample", *args, f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("genlab-sample: error:") and named in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
