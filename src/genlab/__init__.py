"""genlab: train and evaluate image GANs and VAEs from composed Hydra configs."""

__version__ = "0.1.0"
