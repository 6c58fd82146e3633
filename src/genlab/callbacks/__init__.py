"""Lightning callbacks and plugins, one module per concern.

- ``images``: PNG grids of samples and reconstructions (``ImageGrid``), lossless image files.
- ``sample_metrics``: FID/IS/KID of generated samples against cached real features.
- ``checkpointing``: atomic checkpoint IO, the run config and RNG state in checkpoints,
  ``LastCheckpoint``, the one owner of ``last.ckpt`` (regular, SIGTERM and auto-resume), and
  ``FinalValidation``, which scores and checkpoints the final model whatever ended fit.
- ``preemption``: ``Preemption``, the one owner of the signals a cluster sends before it stops a
  job (SIGTERM; SIGUSR1/SIGUSR2 in SLURM): stop after the batch, all ranks together, requeue once.
- ``precision``: the GAN's 16-mixed plugin (one GradScaler update per iteration).
- ``speed``: opt-in channels-last and ``torch.compile`` of the networks.
- ``progress``: ``LogProgress``, progress lines for batch logs (``train.log``, stdout).

Nothing is imported here: each entry point and config names the module it needs.
"""
