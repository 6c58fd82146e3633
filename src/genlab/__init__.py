"""genlab: train and evaluate image GANs and VAEs from composed Hydra configs.

The package, top down (imports point down, never up):

- ``cli``: the console doors; they check the config without torch, then hand over to
- ``training``, ``evaluation``, ``sampling``, ``preparation``, ``comparison``: the work behind
  genlab-train, -eval, -sample, -prepare and -compare
- ``models``: every LightningModule (GAN, VAE, VQ-VAE, VQGAN, the VQ prior)
- ``nets``: plain nn.Modules, injected into the models by the config
- ``losses``, ``augment``, ``metrics``, ``data``, ``callbacks``, ``loggers``
- ``checkpoints``, ``config``, ``errors``, ``console``, ``atomic``, ``redact``, ``rng``, ``keys``:
  small shared pieces, one concern each
"""

__version__ = "0.1.0"
