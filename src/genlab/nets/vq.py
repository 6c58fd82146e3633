"""Discrete-latent networks: VQ-VAE encoder/decoder, vector quantiser, gated PixelCNN, patch D.

Shapes follow van den Oord et al. 2017 (VQ-VAE) and DeepMind's sonnet example
(``examples/vqvae_example.ipynb``): two 4x4 stride-2 convolutions down, each with a ReLU, a 3x3
convolution and its ReLU, a stack of residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv), a 1x1
convolution to the code dimension; the decoder mirrors it with transposed convolutions.
VQGAN's larger networks (taming-transformers') are in ``genlab.nets.taming``.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import GenlabError, check_choice
from genlab.nets.layers import check_args


def _positive(role: str, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise GenlabError(f"{role}.{name}={value} must be >= 1")


class ResidualStack(nn.Module):
    """``layers`` blocks x + conv1x1(relu(conv3x3(relu(x)))), then a ReLU (sonnet's stack).

    ``relu_in``: a ReLU on the input first (the sonnet encoder's ReLU after its 3x3 conv,
    kept here so that the encoder's state_dict keys stay those of earlier checkpoints).
    """

    def __init__(self, width: int, res_width: int, layers: int, relu_in: bool = False) -> None:
        super().__init__()
        self.relu_in = relu_in
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(width, res_width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(res_width, width, 1),
            )
            for _ in range(layers)
        )

    def forward(self, h: Tensor) -> Tensor:
        if self.relu_in:
            h = F.relu(h)
        for block in self.blocks:
            h = h + block(h)
        return F.relu(h)


class VQEncoder(nn.Module):
    """(B, C, H, W) images to (B, D, H / 2^d, W / 2^d) vectors before quantisation.

    ``relu_after_conv``: True is sonnet's encoder (conf/model/vqvae.yaml sets it); False, the
    class default, rebuilds checkpoints saved before the option existed, whose encoders had
    no ReLU between the 3x3 conv and the residual stack, as they were trained.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        embedding_dim: int = 64,
        hidden: int = 128,
        res_hidden: int = 32,
        res_layers: int = 2,
        downsample: int = 2,
        relu_after_conv: bool = False,
    ) -> None:
        super().__init__()
        check_args(type(self).__name__, "model.encoder", image_size, channels, 0)
        _positive("model.encoder", embedding_dim=embedding_dim, hidden=hidden)
        _positive("model.encoder", res_hidden=res_hidden, downsample=downsample)
        if image_size % 2**downsample:
            raise GenlabError(
                f"model.encoder.downsample={downsample}: data.image_size={image_size} must be "
                f"divisible by {2**downsample}"
            )
        self.embedding_dim, self.downsample = embedding_dim, downsample
        self.grid = image_size // 2**downsample
        layers: list[nn.Module] = []
        width_in = channels
        for i in range(downsample):
            width = hidden if i == downsample - 1 else hidden // 2
            layers += [nn.Conv2d(width_in, width, 4, 2, 1), nn.ReLU()]
            width_in = width
        self.net = nn.Sequential(
            *layers,
            nn.Conv2d(hidden, hidden, 3, padding=1),
            ResidualStack(hidden, res_hidden, res_layers, relu_in=relu_after_conv),
            nn.Conv2d(hidden, embedding_dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, D, h, w)


class VQDecoder(nn.Module):
    """(B, D, h, w) quantised vectors to (B, C, H, W) decoder outputs (means, unbounded)."""

    def __init__(
        self,
        embedding_dim: int,
        channels: int,
        hidden: int = 128,
        res_hidden: int = 32,
        res_layers: int = 2,
        downsample: int = 2,
    ) -> None:
        super().__init__()
        _positive("model.decoder", embedding_dim=embedding_dim, channels=channels, hidden=hidden)
        _positive("model.decoder", res_hidden=res_hidden, downsample=downsample)
        layers: list[nn.Module] = []
        width = hidden
        for i in range(downsample):
            last = i == downsample - 1
            out = channels if last else hidden // 2
            layers.append(nn.ConvTranspose2d(width, out, 4, 2, 1))
            if not last:
                layers.append(nn.ReLU())
            width = out
        self.net = nn.Sequential(
            nn.Conv2d(embedding_dim, hidden, 3, padding=1),
            ResidualStack(hidden, res_hidden, res_layers),
            *layers,
        )

    @property
    def last_layer(self) -> Tensor:
        """The weight of the output layer, where VQGAN's adaptive weight compares gradients."""
        return self.net[-1].weight

    def forward(self, q: Tensor) -> Tensor:
        return self.net(q)  # (B, C, H, W)


def _all_reduce(t: Tensor) -> Tensor:
    """Sum over DDP ranks (a no-op in one process), so every rank updates the same codebook."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _broadcast(*tensors: Tensor) -> None:
    if dist.is_available() and dist.is_initialized():
        for t in tensors:
            dist.broadcast(t, 0)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of (B, D, h, w) vectors against K codes of dimension D.

    ``codebook="ema"``: the codes are buffers set from exponential moving averages of the
    assigned vectors (the paper's appendix; sonnet's ``VectorQuantizerEMA``: debiased averages
    with decay 0.99, Laplace-smoothed counts with epsilon 1e-5). ``codebook="loss"``: the codes
    are a parameter trained by the codebook loss ||sg(z) - e||^2. Codes no vector chose for
    ``restart_after`` training updates are re-initialised to random encoder outputs (0 = off).
    ``init``: the codes start uniform in +-sqrt(3 / D) (``sonnet``) or in +-1 / K (``taming``,
    taming-transformers' VectorQuantizer2).
    """

    def __init__(
        self,
        num_codes: int = 512,
        embedding_dim: int = 64,
        codebook: str = "ema",
        decay: float = 0.99,
        epsilon: float = 1e-5,
        restart_after: int = 0,
        init: str = "sonnet",
    ) -> None:
        super().__init__()
        _positive("model.quantizer", num_codes=num_codes, embedding_dim=embedding_dim)
        check_choice("model.quantizer.init", init, ("sonnet", "taming"))
        check_choice("model.quantizer.codebook", codebook, ("ema", "loss"))
        if not 0.0 <= decay < 1.0:
            raise GenlabError(f"model.quantizer.decay={decay} must be in [0, 1)")
        if restart_after < 0:
            raise GenlabError(f"model.quantizer.restart_after={restart_after} must be >= 0")
        self.num_codes, self.embedding_dim, self.codebook = num_codes, embedding_dim, codebook
        self.decay, self.epsilon, self.restart_after = decay, epsilon, restart_after
        # sonnet's VarianceScaling(distribution="uniform") on the (D, K) matrix: fan_in = D;
        # taming's embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        bound = (3.0 / embedding_dim) ** 0.5 if init == "sonnet" else 1.0 / num_codes
        init = torch.empty(num_codes, embedding_dim).uniform_(-bound, bound)
        if codebook == "ema":
            self.register_buffer("embedding", init)
            self.register_buffer("ema_count", torch.zeros(num_codes))  # hidden (biased) averages
            self.register_buffer("ema_sum", torch.zeros(num_codes, embedding_dim))
            self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        else:
            self.embedding = nn.Parameter(init)
        self.register_buffer("unused_for", torch.zeros(num_codes, dtype=torch.long))

    def codes(self, z: Tensor) -> Tensor:
        """Index of the nearest code for each vector of z (B, D, h, w): (B, h, w) long."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.embedding_dim).float()  # (N, D)
        e = self.embedding.float()
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.T + e.pow(2).sum(1)  # (N, K)
        return dist2.argmin(1).view(z.shape[0], *z.shape[2:])

    def lookup(self, codes: Tensor) -> Tensor:
        """Code vectors (B, D, h, w) of indices (B, h, w)."""
        return F.embedding(codes, self.embedding).permute(0, 3, 1, 2)

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        """Quantise z (B, D, h, w).

        Returns ``quantized`` (straight-through: forward the codes, backward the identity to
        z), ``codes`` (B, h, w), ``commitment`` ||z - sg(e)||^2 and ``codebook_loss``
        ||sg(z) - e||^2 (zero under EMA), both per example (B,), averaged over elements.
        """
        codes = self.codes(z)
        e = self.lookup(codes).to(z.dtype)  # (B, D, h, w)
        commitment = (z - e.detach()).pow(2).flatten(1).mean(1)
        if self.codebook == "loss":
            codebook_loss = (z.detach() - e).pow(2).flatten(1).mean(1)
        else:
            codebook_loss = torch.zeros_like(commitment)
        quantized = z + (e - z).detach()
        return {
            "quantized": quantized,
            "codes": codes,
            "commitment": commitment,
            "codebook_loss": codebook_loss,
        }

    @torch.no_grad()
    def update(self, z: Tensor, codes: Tensor) -> None:
        """After a training step's forward: EMA codebook update, then dead-code restarts."""
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.embedding_dim).float()  # (N, D)
        onehot = F.one_hot(codes.flatten(), self.num_codes).float()  # (N, K)
        counts = _all_reduce(onehot.sum(0))  # (K,)
        if self.codebook == "ema":
            sums = _all_reduce(onehot.T @ flat)  # (K, D)
            self.ema_steps += 1
            self.ema_count.sub_((self.ema_count - counts) * (1 - self.decay))
            self.ema_sum.sub_((self.ema_sum - sums) * (1 - self.decay))
            debias = 1 - self.decay ** self.ema_steps.item()
            count, total = self.ema_count / debias, self.ema_sum / debias
            n = count.sum()
            count = (count + self.epsilon) / (n + self.num_codes * self.epsilon) * n
            self.embedding.copy_(total / count[:, None])
        if self.restart_after:
            self.unused_for.add_(1).masked_fill_(counts > 0, 0)
            self._restart(flat)

    def _restart(self, flat: Tensor) -> None:
        """Re-initialise codes unused for ``restart_after`` updates to random inputs of ``flat``."""
        dead = (self.unused_for >= self.restart_after).nonzero().flatten()
        if not len(dead):
            return
        # the global RNG: seeded by genlab-train, so restarts are the same in every run
        pick = torch.randint(len(flat), (len(dead),), device=flat.device)
        vectors = flat[pick].to(self.embedding.dtype)
        self.embedding.data[dead] = vectors
        self.unused_for[dead] = 0
        if self.codebook == "ema":
            # as if the code had held one vector all along, in the hidden (biased) units
            debias = 1 - self.decay ** self.ema_steps.item()
            self.ema_count[dead] = debias
            self.ema_sum[dead] = vectors * debias
        # every rank restarts from rank 0's batch: the codebooks stay identical
        extra = (self.ema_count, self.ema_sum) if self.codebook == "ema" else ()
        _broadcast(self.embedding.data, *extra)


class GatedLayer(nn.Module):
    """One gated PixelCNN layer (van den Oord et al. 2016, "Conditional Image Generation with
    PixelCNN Decoders"): a vertical stack that sees the rows above, a horizontal stack that
    sees the pixels to the left in the row, gated tanh(a) * sigmoid(b), no blind spot.

    The vertical convolution covers the ``kernel // 2`` rows above and the current row; its
    output reaches the horizontal stack shifted down one row, so only rows above. ``first``
    (mask A) shifts the horizontal stack one pixel right as well, so a position never sees
    its own input.
    """

    def __init__(self, width: int, kernel: int, first: bool) -> None:
        super().__init__()
        self.half, self.first = kernel // 2, first
        self.v_conv = nn.Conv2d(width, 2 * width, (self.half + 1, kernel))
        self.v_to_h = nn.Conv2d(2 * width, 2 * width, 1)
        self.h_conv = nn.Conv2d(width, 2 * width, (1, self.half + 1))
        self.h_out = nn.Conv2d(width, width, 1)

    @staticmethod
    def _gate(h: Tensor) -> Tensor:
        a, b = h.chunk(2, 1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        k = self.half
        v_feat = self.v_conv(F.pad(v, (k, k, k, 0)))  # rows r - k .. r
        v_down = F.pad(v_feat, (0, 0, 1, 0))[:, :, :-1]  # rows r - k - 1 .. r - 1
        h_in = F.pad(h, (1, 0))[:, :, :, :-1] if self.first else h  # mask A: left of c only
        h_feat = self.h_conv(F.pad(h_in, (k, 0))) + self.v_to_h(v_down)
        h_new = self.h_out(self._gate(h_feat))
        return self._gate(v_feat), h_new if self.first else h + h_new


class GatedPixelCNN(nn.Module):
    """Autoregressive prior over a (B, h, w) grid of K codes: logits (B, K, h, w).

    Position (r, c) depends only on the codes before it in raster order.
    """

    def __init__(
        self, num_codes: int, width: int = 64, layers: int = 8, kernel: int = 3, head: int = 256
    ) -> None:
        super().__init__()
        _positive("model.prior", num_codes=num_codes, width=width, layers=layers, head=head)
        if kernel < 3 or kernel % 2 == 0:
            raise GenlabError(f"model.prior.kernel={kernel} must be odd and >= 3")
        self.num_codes = num_codes
        self.embed = nn.Embedding(num_codes, width)
        self.layers = nn.ModuleList(GatedLayer(width, kernel, i == 0) for i in range(layers))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(width, head, 1), nn.ReLU(), nn.Conv2d(head, num_codes, 1)
        )

    def forward_embedded(self, e: Tensor) -> Tensor:
        """Logits (B, K, h, w) from embedded codes (B, width, h, w)."""
        v = h = e
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)

    def forward(self, codes: Tensor) -> Tensor:
        return self.forward_embedded(self.embed(codes).permute(0, 3, 1, 2))

    @torch.no_grad()
    def sample(self, n: int, grid: tuple[int, int], temperature: float = 1.0) -> Tensor:
        """Draw ``n`` code grids (n, h, w) position by position from the global RNG."""
        codes = torch.zeros(n, *grid, dtype=torch.long, device=self.embed.weight.device)
        for r in range(grid[0]):
            for c in range(grid[1]):
                logits = self(codes)[:, :, r, c].float() / temperature  # (n, K)
                codes[:, r, c] = torch.multinomial(torch.softmax(logits, 1), 1).squeeze(1)
        return codes


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017) as taming-transformers' NLayerDiscriminator.

    4x4 convolutions: one stride-2 without norm, ``layers - 1`` stride-2 with BatchNorm and
    channels doubling (at most 8x), one stride-1 with BatchNorm, a stride-1 conv to one logit
    per patch; LeakyReLU(0.2); weights N(0, 0.02), BatchNorm gains N(1, 0.02). Returns the
    patch logits flattened (B, P): the GAN losses average over them.
    """

    def __init__(self, image_size: int, channels: int, base_channels: int = 64, layers: int = 3):
        super().__init__()
        check_args(type(self).__name__, "model.discriminator", image_size, channels, 0)
        _positive("model.discriminator", base_channels=base_channels, layers=layers)
        size = image_size // 2**layers - 2  # two stride-1 4x4 convs with padding 1: -1 each
        if size < 1:
            raise GenlabError(
                f"model.discriminator.layers={layers} halves data.image_size={image_size} "
                "below one patch: use fewer layers"
            )
        self.num_classes = 0
        seq: list[nn.Module] = [nn.Conv2d(channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [
                nn.Conv2d(base_channels * prev, base_channels * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(base_channels * mult),
                nn.LeakyReLU(0.2),
            ]
        seq.append(nn.Conv2d(base_channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.main(x).flatten(1)  # (B, P)
