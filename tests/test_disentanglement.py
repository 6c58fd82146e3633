"""MIG and the FactorVAE score (genlab.metrics.disentanglement) on hand-built codes, and the
dSprites-like shapes they read (genlab.data.shapes)."""

import csv
import math
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import mutual_info_score

from genlab.callbacks.disentanglement import Disentanglement
from genlab.data import ImageDataModule
from genlab.data.shapes import FACTOR_NAMES, FACTOR_SIZES, Shapes
from genlab.errors import GenlabError
from genlab.metrics.disentanglement import (
    FACTOR_VAE_SCORE,
    discretize,
    entropy,
    factor_vae_score,
    mig,
    mutual_info,
    mutual_info_matrix,
)
from tests.conftest import TINY, ok

K = len(FACTOR_SIZES)


def draw(n: int, seed: int) -> torch.Tensor:
    """n uniform factor draws (n, 5) from dSprites' grid."""
    return Shapes(8).sample_factors(n, torch.Generator().manual_seed(seed))


def perfect(factors: torch.Tensor) -> torch.Tensor:
    """Each factor in its own latent, then 2 noise latents and 1 collapsed one (std 0.01 < 0.05:
    the pruning must drop it, else its tiny variance would win every vote)."""
    g = torch.Generator().manual_seed(int(factors.sum()))
    n = len(factors)
    noise = torch.randn(n, 2, generator=g)
    collapsed = 0.01 * torch.randn(n, 1, generator=g)
    return torch.cat([factors.double() / torch.tensor(FACTOR_SIZES), noise, collapsed], 1)


def random_codes(factors: torch.Tensor) -> torch.Tensor:
    """Latents independent of the factors."""
    g = torch.Generator().manual_seed(int(factors.sum()) + 1)
    return torch.randn(len(factors), 8, generator=g, dtype=torch.float64)


def entangled(factors: torch.Tensor) -> torch.Tensor:
    """Factor pairs (scale, orientation) and (pos_x, pos_y) rotated by 45 degrees, shape kept."""
    z = perfect(factors)[:, :K] * torch.tensor(FACTOR_SIZES) / torch.tensor(FACTOR_SIZES).sub(1)
    z = z - 0.5  # each factor in [-0.5, 0.5]: the rotation mixes comparable spreads
    out = z.clone()
    for a, b in ((1, 2), (3, 4)):
        out[:, a], out[:, b] = (z[:, a] + z[:, b]) / 2**0.5, (z[:, a] - z[:, b]) / 2**0.5
    return out


def test_mutual_information_by_hand():
    # a = [0,0,0,1], b = [0,0,1,1]: p(0,0) = 1/2, p(0,1) = p(1,1) = 1/4; p(a) = (3/4, 1/4),
    # p(b) = (1/2, 1/2). I = 1/2 ln(4/3) + 1/4 ln(2/3) + 1/4 ln 2 = 0.2157616 nats;
    # H(a) = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623351, H(b) = ln 2.
    a, b = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1])
    hand = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    assert mutual_info(a, b) == pytest.approx(hand, abs=1e-12)
    assert mutual_info(a, b) == pytest.approx(0.2157616, abs=1e-7)
    assert entropy(a) == pytest.approx(0.5623351, abs=1e-7)
    assert entropy(b) == pytest.approx(math.log(2), abs=1e-12)
    assert mutual_info(b, b) == pytest.approx(math.log(2), abs=1e-12)  # I(v; v) = H(v)
    # MIG of codes z0 = b (I = ln 2) and z1 = a (I = 0.2157616) for the factor b, 2 bins (which
    # keep both codes as they are): (ln 2 - 0.2157616) / ln 2 = 0.6887219.
    codes = torch.stack([b, a], 1).double()
    assert mig(codes, b[:, None], bins=2) == pytest.approx(0.6887219, abs=1e-7)


def test_mutual_information_agrees_with_sklearn():
    # disentanglement_lib's utils.discrete_mutual_info calls sklearn's mutual_info_score (nats)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(7, (500,), generator=g)
    b = (a + torch.randint(3, (500,), generator=g)) % 5
    assert mutual_info(a, b) == pytest.approx(mutual_info_score(a.numpy(), b.numpy()), abs=1e-12)


def test_discretize_matches_numpy_histogram():
    # disentanglement_lib's _histogram_discretize: np.digitize(x, np.histogram(x, 20)[1][:-1])
    x = torch.randn(1000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = discretize(x, 20)
    for j in range(3):
        edges = np.histogram(x[:, j].numpy(), 20)[1][:-1]
        assert (ours[:, j].numpy() + 1 == np.digitize(x[:, j].numpy(), edges)).all()


def test_mig_perfect_random_entangled():
    factors = draw(10_000, seed=0)  # disentanglement_lib's mig.num_train
    # A perfect code's I(z_k; v_k) is H(bin(v_k)): 20 bins merge orientation's 40 values into
    # pairs and some of the 32 positions, so its MIG is the mean of H(bin(v_k)) / H(v_k) less
    # the plug-in MI the noise latents pick up by chance (about (20-1)(32-1) / 2N = 0.03 nats).
    codes = perfect(factors)
    binned = discretize(codes, 20)
    ceiling = np.mean([entropy(binned[:, k]) / entropy(factors[:, k]) for k in range(K)])
    assert 0.85 < ceiling < 1  # ln 20 / ln 40 = 0.81 for orientation alone
    score_perfect = mig(codes, factors)
    assert ceiling - 0.03 < score_perfect <= ceiling
    score_random = mig(random_codes(factors), factors)
    assert 0 <= score_random < 0.02
    score_entangled = mig(entangled(factors), factors)
    assert 0.1 < score_entangled < score_perfect - 0.3
    m = mutual_info_matrix(codes, factors)
    assert m.shape == (codes.shape[1], K)
    assert (m.argmax(0) == torch.arange(K)).all()


def test_factor_vae_score_perfect_random_entangled():
    codes = perfect(draw(10_000, seed=1))  # the variances' points (disentanglement_lib: 10,000)
    out = factor_vae_score(perfect, FACTOR_SIZES, codes, 200, 200, batch_size=64)
    assert out[FACTOR_VAE_SCORE] == 1.0 and out["factor_vae_train_accuracy"] == 1.0
    assert out["factor_vae_active_latents"] == K + 2  # the collapsed latent is pruned
    out = factor_vae_score(random_codes, FACTOR_SIZES, random_codes(draw(10_000, 2)), 400, 400)
    # chance is 1/K = 0.2; the majority classifier of 8 latents over 400 votes fits a little
    assert 0.1 < out[FACTOR_VAE_SCORE] < 0.35
    out = factor_vae_score(entangled, FACTOR_SIZES, entangled(draw(10_000, 3)), 400, 400)
    # shape is alone in its latent (always right); each rotated pair shares two latents, so a
    # latent's votes split between two factors and about half of them are misclassified:
    # (1 + 4 * 0.5) / 5 = 0.6
    assert 0.45 < out[FACTOR_VAE_SCORE] < 0.8


def test_factor_vae_score_all_collapsed_is_zero():
    # disentanglement_lib returns 0 when prune_dims leaves no latent
    def flat(f: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(f), 4, dtype=torch.float64)

    assert factor_vae_score(flat, FACTOR_SIZES, flat(draw(100, 0)), 10, 10)[FACTOR_VAE_SCORE] == 0


def test_mig_refuses_constant_factor():
    factors = torch.zeros(100, 1, dtype=torch.long)
    with pytest.raises(GenlabError, match="constant"):
        mig(torch.randn(100, 3), factors)


def test_shapes_grid_and_rendering():
    ds = Shapes(image_size=32)
    assert len(ds) == 737_280 == 3 * 6 * 40 * 32 * 32  # dSprites' combinations
    assert ds.factor_names == FACTOR_NAMES and ds.factor_sizes == FACTOR_SIZES
    i = torch.tensor([0, 1, 32, 12345, 737_279])
    f = ds.factors_of(i)
    assert f[1].tolist() == [0, 0, 0, 0, 1] and f[2].tolist() == [0, 0, 0, 1, 0]
    assert f[-1].tolist() == [s - 1 for s in FACTOR_SIZES]
    assert (ds.index_of(f) == i).all()
    x, label = ds[12345]
    assert x.shape == (1, 32, 32) and set(x.unique().tolist()) <= {-1.0, 1.0}
    assert label == f[3, 0]
    # deterministic, and each factor changes the picture: scale grows the area, pos_x moves it
    base = torch.tensor([[0, 0, 0, 16, 16]])
    img = ds.images_of(base)
    assert torch.equal(img, ds.images_of(base))
    bigger = ds.images_of(torch.tensor([[0, 5, 0, 16, 16]]))
    assert (bigger > 0).sum() > 2 * (img > 0).sum()  # scale 1 vs 0.5: 4x the area
    moved = ds.images_of(torch.tensor([[0, 0, 0, 31, 16]]))
    cols = lambda im: (im[0, 0] > 0).nonzero()[:, 1].double().mean()  # noqa: E731
    assert cols(moved) > cols(img) + 5
    shapes = [ds.images_of(torch.tensor([[s, 5, 3, 16, 16]])) for s in range(3)]
    assert not torch.equal(shapes[0], shapes[1]) and not torch.equal(shapes[1], shapes[2])


def test_shapes_through_the_datamodule():
    dm = ImageDataModule(source="shapes", image_size=32, num_classes=3, limit=200, batch_size=8)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 32, 32) and y.max() < 3
    known = dm.known_factors()
    assert known is not None and known.factors.shape == (737_280, 5)
    assert ImageDataModule(source="mnist5k").known_factors() is None


def test_callback_logs_mig_from_the_cli(run_cli, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        "genlab-train", "model=beta_vae", "data=shapes", "data.image_size=32", *TINY,
        "callbacks=[default,disentanglement]", "callbacks.disentanglement.num_points=500",
        "callbacks.disentanglement.train_votes=20", "callbacks.disentanglement.eval_votes=20",
        "callbacks.disentanglement.batch_size=16", f"hydra.run.dir={run}",
    )  # fmt: skip
    ok(proc)
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    migs = [float(r["val/mig"]) for r in rows if r.get("val/mig")]
    scores = [float(r["val/factor_vae_score"]) for r in rows if r.get("val/factor_vae_score")]
    assert len(migs) == 2 and len(scores) == 2  # every epoch (every_n_epochs: 1), 2 epochs
    assert all(0 <= m <= 1 for m in migs) and all(0 <= s <= 1 for s in scores)


def test_callback_refuses_data_without_factors(run_cli, tmp_path):
    proc = run_cli("genlab-train", "model=beta_vae", *TINY, "callbacks=[default,disentanglement]")
    assert proc.returncode == 2
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert "callbacks.disentanglement: data.source=mnist5k has no known factors" in last


def test_callback_refuses_a_model_without_encoder():
    dm = ImageDataModule(source="shapes", image_size=32, num_classes=3)
    trainer = SimpleNamespace(datamodule=dm)
    with pytest.raises(GenlabError, match="callbacks.disentanglement: .* no Gaussian encoder"):
        Disentanglement().setup(trainer, pl.LightningModule(), "fit")
    with pytest.raises(GenlabError, match="callbacks.disentanglement.num_points=1"):
        Disentanglement(num_points=1)


class MomentEncoder(torch.nn.Module):
    """An encoder read off the pixels: the shape's centroid (x, y), the square root of its area,
    and two noise latents; it knows position and size, not shape or orientation."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        mass = (x[:, 0] > 0).double()  # (B, S, S)
        grid = torch.arange(x.shape[-1], dtype=torch.float64)
        area = mass.sum((1, 2)).clamp_min(1)
        cx = (mass.sum(1) * grid).sum(1) / area
        cy = (mass.sum(2) * grid).sum(1) / area
        g = torch.Generator().manual_seed(int(area.sum()))
        noise = torch.randn(len(x), 2, generator=g, dtype=torch.float64)
        mu = torch.cat([torch.stack([cx, cy, area.sqrt()], 1), noise], 1)
        return mu, torch.zeros_like(mu)


class MomentModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = MomentEncoder()

    def _y(self, labels: torch.Tensor) -> None:
        return None


def test_callback_scores_an_encoder_of_rendered_images():
    # the centroid latents carry pos_x and pos_y (each alone in its latent: MI ~ H(bin(pos)));
    # sqrt(area) carries scale but also shape (a square of the same scale is larger than an
    # ellipse); shape and orientation are in no latent, so MIG sits near (2 to 3 of 5) factors
    dm = ImageDataModule(source="shapes", image_size=32, num_classes=3)
    callback = Disentanglement(num_points=2000, train_votes=100, eval_votes=100)
    module = MomentModule()
    callback.setup(SimpleNamespace(datamodule=dm), module, "fit")
    out = callback.evaluate(module)
    codes = callback.represent(module, callback.points)
    m = mutual_info_matrix(codes, callback.points)  # (5 latents, 5 factors)
    assert m[:, 3].argmax() == 0 and m[:, 4].argmax() == 1  # pos_x -> cx, pos_y -> cy
    assert m[:, 1].argmax() == 2  # scale -> sqrt(area)
    assert 0.3 < out["mig"] < 0.65
    # pos_x, pos_y and scale votes land on their latents; shape and orientation votes on others
    assert 0.5 < out["factor_vae_score"] < 0.9
