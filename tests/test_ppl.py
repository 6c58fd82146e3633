"""Perceptual path length against a step-by-step StyleGAN2-ADA computation on the same latents."""

import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from genlab.errors import GenlabError
from genlab.metrics.lpips import load_lpips
from genlab.metrics.ppl import (
    perceptual_path_length,
    ppl_distances,
    ppl_from_distances,
    ppl_protocol,
    slerp,
)
from genlab.nets.dcgan import DCGANGenerator
from genlab.nets.stylegan2 import StyleGAN2Generator
from tests.test_vqgan import random_lpips

EPS = 1e-4


def tiny_generator(seed: int = 0, channels: int = 3) -> StyleGAN2Generator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = StyleGAN2Generator(
            16, 32, channels, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32
        )
    return g.eval()


@pytest.fixture(scope="module")
def lpips_vgg(tmp_path_factory) -> nn.Module:
    """LPIPS VGG through genlab's local-file loader, random weights, non-negative heads."""
    with warnings.catch_warnings():  # torchvision's deprecation of lpips' `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        path = random_lpips(tmp_path_factory.mktemp("lpips") / "lpips_vgg.pth", net="vgg")
    return load_lpips("vgg", str(path), "metrics.lpips_weights")


def _lpips_vectors(lpips: nn.Module, img: Tensor) -> Tensor:
    """StyleGAN's ``return_lpips`` form: unit-normalised features x sqrt(head) / sqrt(HW), flat.

    The squared distance between two such vectors is the LPIPS distance.
    """
    feats = lpips.net(lpips.scaling_layer(img))
    parts = []
    for f, lin in zip(feats, lpips.lins, strict=True):
        f = f / (f.square().sum(1, keepdim=True).sqrt() + 1e-10)
        w = lin.model[-1].weight.reshape(1, -1, 1, 1)  # (1, C, 1, 1), >= 0
        parts.append((f * w.sqrt() / (f.shape[2] * f.shape[3]) ** 0.5).flatten(1))
    return torch.cat(parts, 1)


@torch.no_grad()
def _their_ppl(G, lpips, n, batch, space, sampling, crop, seed=0) -> float:
    """metrics/perceptual_path_length.py (NVlabs/stylegan2-ada-pytorch @ d72cc7d) step by step.

    Their torch.rand / torch.randn draws from one seeded generator; noise off (a fresh
    StyleGAN2Generator's noise strengths are 0), so one synthesis call serves both ends.
    """
    g = torch.Generator().manual_seed(seed)
    dist = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        t = torch.rand([b], generator=g) * (1 if sampling == "full" else 0)
        z0, z1 = torch.randn([b * 2, G.latent_dim], generator=g).chunk(2)
        dtype = next(G.parameters()).dtype
        t, z0, z1 = t.to(dtype), z0.to(dtype), z1.to(dtype)
        if space == "w":
            w0, w1 = G.mapping(torch.cat([z0, z1]), update_w_avg=False).chunk(2)
            wt0 = w0.lerp(w1, t.unsqueeze(1).unsqueeze(2))
            wt1 = w0.lerp(w1, t.unsqueeze(1).unsqueeze(2) + EPS)
        else:
            zt0 = slerp(z0, z1, t.unsqueeze(1))
            zt1 = slerp(z0, z1, t.unsqueeze(1) + EPS)
            wt0, wt1 = G.mapping(torch.cat([zt0, zt1]), update_w_avg=False).chunk(2)
        img = G.synthesis(torch.cat([wt0, wt1]))
        if crop:
            c = img.shape[2] // 8
            img = img[:, :, c * 3 : c * 7, c * 2 : c * 6]
        # (no downsampling below 512 px; [0, 255] scaling is their VGG's input, [-1, 1] is ours)
        if img.shape[1] == 1:
            img = img.repeat([1, 3, 1, 1])
        lpips_t0, lpips_t1 = _lpips_vectors(lpips, img).chunk(2)
        dist.append((lpips_t0 - lpips_t1).square().sum(1) / EPS**2)
    dist = torch.cat(dist)[:n].numpy()
    lo = np.percentile(dist, 1, method="lower")
    hi = np.percentile(dist, 99, method="higher")
    return float(np.extract(np.logical_and(dist >= lo, dist <= hi), dist).mean())


@pytest.mark.parametrize(
    "space, sampling, crop, channels", [("w", "end", False, 3), ("z", "full", True, 1)]
)
def test_ppl_follows_stylegan2_ada(lpips_vgg, space, sampling, crop, channels):
    G = tiny_generator(channels=channels)
    kw = {"space": space, "sampling": sampling, "crop": crop}
    ours = perceptual_path_length(G, lpips_vgg, 24, batch_size=8, **kw)
    theirs = _their_ppl(G, lpips_vgg, 24, 8, space, sampling, crop)
    assert ours == pytest.approx(theirs, rel=1e-3) and ours > 0
    again = perceptual_path_length(G, lpips_vgg, 24, batch_size=8, **kw)
    other_seed = perceptual_path_length(G, lpips_vgg, 24, batch_size=8, seed=1, **kw)
    assert again == ours != other_seed


class Sliding(nn.Module):
    """G's images plus stripes whose phase moves ``k`` times as fast as w along v."""

    def __init__(self, G: StyleGAN2Generator, k: float) -> None:
        super().__init__()
        self.G, self.k, self.latent_dim, self.num_classes = G, k, G.latent_dim, 0
        self.mapping = G.mapping
        v = torch.randn(32, generator=torch.Generator().manual_seed(3))
        self.register_buffer("v", v / v.norm())

    def synthesis(self, ws: Tensor) -> Tensor:
        img = self.G.synthesis(ws)  # (B, 3, 32, 32)
        phase = self.k * (ws[:, 0] @ self.v)[:, None, None, None]  # (B, 1, 1, 1)
        columns = torch.arange(32.0).view(1, 1, 1, 32)
        return img + 0.5 * torch.sin(2 * torch.pi * columns / 8 + phase)


def test_a_generator_that_changes_faster_scores_clearly_higher(lpips_vgg):
    G = tiny_generator()
    slow = perceptual_path_length(Sliding(G, 1.0), lpips_vgg, 24, batch_size=8)
    fast = perceptual_path_length(Sliding(G, 8.0), lpips_vgg, 24, batch_size=8)
    assert fast > 3 * slow > 0


@torch.no_grad()
def test_noise_is_shared_within_a_pair(lpips_vgg):
    G = tiny_generator()
    quiet = perceptual_path_length(G, lpips_vgg, 16, batch_size=8)
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.3)
    noisy = perceptual_path_length(G, lpips_vgg, 16, batch_size=8)
    # two draws of the noise for one w: what each distance would be were it not shared
    ws = G.mapping(torch.randn(8, 16), update_w_avg=False)
    apart = (lpips_vgg(G.synthesis(ws), G.synthesis(ws)).mean() / EPS**2).item()
    assert noisy < 3 * quiet and apart > 1e3 * noisy


def test_percentile_filter_by_hand():
    d = torch.cat([torch.tensor([-100.0, -50.0]), torch.arange(197.0), torch.tensor([1e4, 1e5])])
    # 201 values: the 1st "lower" percentile is the 3rd smallest (0), the 99th "higher" the
    # 3rd largest (196): both outliers on each side go, 0..196 stay
    assert ppl_from_distances(d) == pytest.approx(98.0)


def test_distances_are_per_pair_and_the_caller_rng_is_untouched(lpips_vgg):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    d = ppl_distances(tiny_generator(), lpips_vgg, 5, batch_size=2)
    assert d.shape == (5,) and torch.equal(torch.get_rng_state(), before)


def test_generators_without_a_mapping_network_are_refused(lpips_vgg):
    with pytest.raises(GenlabError, match="mapping network.*DCGANGenerator has none") as err:
        perceptual_path_length(DCGANGenerator(16, 32, 3), lpips_vgg, 4)
    assert "\n" not in str(err.value)
    with pytest.raises(GenlabError, match="float32"):  # 1e-4 is below half precision
        perceptual_path_length(tiny_generator().half(), lpips_vgg, 4)


def test_protocol_names_every_setting():
    settings = {"space": "z", "sampling": "full", "crop": True, "batch_size": 4, "seed": 3}
    p = ppl_protocol(100, **settings)
    assert p["num_samples"] == 100 and {k: p[k] for k in settings} == settings
