"""Every LightningModule, one file each, and what they share.

- ``gan``: ``GAN``, D step then G step (every GAN of the zoo); ``ema``: its generator EMA
- ``vae``: ``VAE`` (beta-VAE, CVAE, IWAE, the two-layer VAE, VampPrior)
- ``vqvae``, ``vq_prior``, ``vqgan``: the discrete-latent line
- ``manual``: the manual-optimisation mixin of GAN and VQGAN (one optimizer step idiom)
- ``loop``: what modules read of Lightning's loop (logged steps, the finite-loss check)
- ``ramp``: values ramped over images seen (R3GAN's schedules)

Networks are injected through the config, never imported here; no module imports a callback.
"""
