"""LightningModules of the discrete-latent line: VQ-VAE, its autoregressive prior, VQGAN."""
