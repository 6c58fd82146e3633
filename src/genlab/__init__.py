"""genlab: train and evaluate image GANs and VAEs from composed Hydra configs.

The package, top down (imports point down, never up):

- ``cli``: the console doors; they check the config without torch, then hand over to
- ``training``, ``evaluation``, ``sampling``, ``preparation``, ``comparison``, ``exporting``:
  the work behind genlab-train, -eval, -sample, -prepare, -compare and -export
- ``models``: every LightningModule (GAN, VAE, VQ-VAE, VQGAN, the VQ prior)
- ``nets``: plain nn.Modules, injected into the models by the config
- ``losses``, ``augment``, ``metrics``, ``data``, ``callbacks``, ``loggers``
- ``checkpoints``, ``config``, ``errors``, ``console``, ``atomic``, ``redact``, ``rng``, ``keys``:
  small shared pieces, one concern each
"""

__version__ = "0.1.0"


def load(path: str, trust: bool = False):
    """A trained model, ready to sample: ``model.sample(n, labels)`` (and a VAE's
    ``model.reconstruct(x)``), on CPU in eval mode.

    Args:
        path: a checkpoint file, a genlab-export folder, or ``hf://org/name[@revision]``.
        trust: build classes outside genlab's table from the saved config (a file you trust).
    """
    from genlab.checkpoints import load_model

    return load_model(path, trust=trust)[1]
