"""LPIPS (Zhang et al. 2018) from a local weights file: VQGAN's perceptual loss and PPL's distance.

The ``lpips`` package would download its backbone and linear heads; built with ``pnet_rand`` and
``pretrained=False`` it fetches nothing, and the whole state dict comes from the user's file.
"""

import warnings

import torch
from torch import nn

from genlab.errors import GenlabError


def load_lpips(net: str, weights: str | None, key: str, unset_hint: str = "") -> nn.Module:
    """LPIPS with ``net`` (vgg, alex, squeeze), weights from the file ``weights``.

    Args:
        key: the config key naming the file, for the one-line errors.
        unset_hint: what else the user can do when ``key`` is not set.
    """
    if not weights:
        raise GenlabError(
            f"{key} is not set: it needs a local LPIPS-{net} state dict (e.g. "
            f"torch.save(lpips.LPIPS(net='{net}').state_dict(), 'lpips_{net}.pth') where a network "
            f"is available){unset_hint}"
        )
    try:
        import lpips
    except ImportError:
        msg = f"{key}: the lpips package is not installed (pip install genlab[perceptual])"
        raise GenlabError(msg) from None
    with warnings.catch_warnings():  # torchvision's deprecation of lpips' `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise GenlabError(f"{key}={weights}: no such file") from None
    except Exception as e:  # not a torch file, another net's weights
        msg = f"{key}={weights}: not LPIPS-{net} weights ({type(e).__name__})"
        raise GenlabError(msg) from None
    return model.eval().requires_grad_(False)
