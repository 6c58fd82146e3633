"""Disentanglement metrics of a representation against known factors: MIG and the FactorVAE score.

- MIG (Chen et al. 2018, β-TCVAE): each latent (the encoder mean) discretised into 20 equal-width
  bins over its range (disentanglement_lib's ``histogram_discretizer``, ``num_bins=20``); the
  mutual information I(z_j; v_k) of the discrete pairs (plug-in, nats); per factor, the gap
  between its two most informative latents divided by H(v_k); MIG is the mean over factors.
  Note: 20 bins cannot hold a factor with more values (dSprites' 40 orientations, 32 positions),
  so even a perfect code scores H(bin(v_k)) / H(v_k) < 1 on those.
- FactorVAE score (Kim & Mnih 2018): latents are divided by their std over the data, and those
  with std < 0.05 (collapsed to the prior) are pruned (disentanglement_lib's ``prune_dims``). A
  vote fixes one random factor at a random value, draws the others at random for ``batch_size``
  points, and names the active latent of least normalised variance. A majority-vote classifier
  (latent -> factor, fitted on the training votes) is scored on fresh votes.
  disentanglement_lib's configs use batch_size 64, 10,000 training and 5,000 evaluation votes,
  10,000 points for the variances. Its code indexes the votes by the argmin among active latents
  as if it were a latent's index; here the vote goes to that latent itself.

Functions take codes (N, D) and factor indices (N, K); ``factor_vae_score`` takes a function from
factor indices to codes, since each vote needs fresh points with one factor fixed.
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from genlab.errors import GenlabError

NUM_BINS = 20  # disentanglement_lib's MIG discretisation
PRUNE_STD = 0.05  # disentanglement_lib's prune_dims.threshold, on the latent's std
MIG, FACTOR_VAE_SCORE = "mig", "factor_vae_score"


def discretize(codes: Tensor, bins: int = NUM_BINS) -> Tensor:
    """Bin index (N, D) in [0, bins) of each column, ``bins`` equal widths over its range
    (np.histogram's edges and np.digitize, as disentanglement_lib)."""
    low, high = codes.min(0).values, codes.max(0).values  # (D,)
    width = (high - low).clamp_min(torch.finfo(codes.dtype).tiny) / bins
    # np.histogram's last bin is closed: the maximum falls in bin - 1, not in a bin of its own
    return ((codes - low) / width).floor().long().clamp(0, bins - 1)


def entropy(labels: Tensor) -> float:
    """Plug-in entropy (nats) of discrete labels (N,)."""
    p = torch.bincount(labels - labels.min()).double()
    p = p[p > 0] / len(labels)
    return float(-(p * p.log()).sum())


def mutual_info(a: Tensor, b: Tensor) -> float:
    """Plug-in mutual information (nats) of two discrete label sequences (N,) each."""
    a, b = a - a.min(), b - b.min()
    nb = int(b.max()) + 1
    joint = torch.bincount(a * nb + b, minlength=(int(a.max()) + 1) * nb).double()
    joint = joint.view(-1, nb) / len(a)  # (|A|, |B|)
    pa, pb = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * (joint[nz] / (pa * pb)[nz]).log()).sum())


def mutual_info_matrix(codes: Tensor, factors: Tensor, bins: int = NUM_BINS) -> Tensor:
    """I(z_j; v_k) (D, K) in nats, the codes (N, D) discretised into ``bins`` bins."""
    binned = discretize(codes.double(), bins)
    return torch.tensor(
        [[mutual_info(binned[:, j], factors[:, k]) for k in range(factors.shape[1])]
         for j in range(codes.shape[1])],
        dtype=torch.float64,
    )  # fmt: skip


def mig(codes: Tensor, factors: Tensor, bins: int = NUM_BINS) -> float:
    """The mutual information gap of codes (N, D) and factor indices (N, K), in [0, 1]."""
    if codes.shape[1] < 2:
        raise GenlabError(f"MIG needs at least 2 latents, got {codes.shape[1]}")
    h = torch.tensor([entropy(factors[:, k]) for k in range(factors.shape[1])])  # (K,)
    if (h == 0).any():
        raise GenlabError("MIG: a factor is constant over the points (entropy 0); draw more")
    top2 = mutual_info_matrix(codes, factors, bins).topk(2, dim=0).values  # (2, K)
    return float(((top2[0] - top2[1]) / h).mean())


def active_latents(codes: Tensor, threshold: float = PRUNE_STD) -> Tensor:
    """Mask (D,) of latents whose std over codes (N, D) is at least ``threshold``."""
    return codes.double().std(0) >= threshold


def vote_table(
    represent: Callable[[Tensor], Tensor],
    factor_sizes: Sequence[int],
    global_var: Tensor,
    active: Tensor,
    votes: int,
    batch_size: int,
    gen: torch.Generator,
) -> Tensor:
    """Votes (D, K): how often latent d had the least normalised variance when factor k was
    fixed, over ``votes`` draws of ``batch_size`` points each."""
    k_all = len(factor_sizes)
    table = torch.zeros(len(global_var), k_all, dtype=torch.long)
    fixed = torch.randint(k_all, (votes,), generator=gen)
    latents = active.nonzero()[:, 0]  # (A,) the active latents' indices
    for k in fixed.tolist():
        factors = torch.stack(
            [torch.randint(s, (batch_size,), generator=gen) for s in factor_sizes], 1
        )  # (L, K)
        factors[:, k] = int(torch.randint(factor_sizes[k], (1,), generator=gen))
        codes = represent(factors).double()  # (L, D)
        local = codes[:, latents].var(0) / global_var[latents]  # (A,)
        table[latents[local.argmin()], k] += 1
    return table


def factor_vae_score(
    represent: Callable[[Tensor], Tensor],
    factor_sizes: Sequence[int],
    codes: Tensor,
    train_votes: int = 800,
    eval_votes: int = 800,
    batch_size: int = 64,
    threshold: float = PRUNE_STD,
    seed: int = 0,
) -> dict[str, float]:
    """The FactorVAE score (accuracy of the majority-vote classifier on fresh votes).

    Args:
        represent: factor indices (L, K) -> codes (L, D) of images drawn with those factors.
        codes: codes (N, D) of random points, for each latent's global variance.
        batch_size: L, the points per vote.

    Returns:
        ``factor_vae_score`` (evaluation votes), ``factor_vae_train_accuracy`` and
        ``factor_vae_active_latents`` (latents kept by the pruning).
    """
    if batch_size < 2 or train_votes < 1 or eval_votes < 1:
        raise GenlabError("FactorVAE score: batch_size must be >= 2 and the vote counts >= 1")
    active = active_latents(codes, threshold)
    if not active.any():  # every latent collapsed: nothing can vote (disentanglement_lib: 0)
        return {
            FACTOR_VAE_SCORE: 0.0,
            "factor_vae_train_accuracy": 0.0,
            "factor_vae_active_latents": 0.0,
        }
    global_var = codes.double().var(0)  # (D,)
    gen = torch.Generator().manual_seed(seed)
    train = vote_table(represent, factor_sizes, global_var, active, train_votes, batch_size, gen)
    test = vote_table(represent, factor_sizes, global_var, active, eval_votes, batch_size, gen)
    classifier = train.argmax(1)  # (D,) each latent's majority factor
    rows = torch.arange(len(classifier))
    return {
        FACTOR_VAE_SCORE: float(test[rows, classifier].sum() / test.sum()),
        "factor_vae_train_accuracy": float(train[rows, classifier].sum() / train.sum()),
        "factor_vae_active_latents": float(active.sum()),
    }
