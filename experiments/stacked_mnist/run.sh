#!/usr/bin/env bash
# The Stacked MNIST study (README.md): 9 runs, 16 minutes on 2 quiet CPU cores with the
# earlier classifier (75 beside two other jobs with today's).
# Run from the repository root, in the venv genlab is installed in: bash experiments/stacked_mnist/run.sh
set -euo pipefail
export OMP_NUM_THREADS=1   # one thread per run; the two sweeps run side by side
# the digit classifier trains once (about 3 minutes) into the cache every run then loads
python -c "import os; from genlab.metrics.modes import ModeClassifier as M
M(os.environ.get('GENLAB_CACHE_DIR', '~/.cache/genlab'))"
STUDY="model=gan data=stacked_mnist metrics=modes metrics.every_n_epochs=1 trainer=cpu
trainer.max_epochs=3 logger=csv callbacks=last_checkpoint hydra.sweep.dir=multirun/stacked_mnist"
# DCGAN and PacDCGAN2 (model.pack=2), 3 seeds each
genlab-train -m model.pack=1,2 seed=1,2,3 $STUDY 'hydra.sweep.subdir=dcgan_${hydra.job.num}' &
# DCGAN's networks with R3GAN's loss: RpGAN + R1 + R2 (gamma 0.05, R3GAN's CIFAR-10 start value)
genlab-train -m model.loss=rpgan model.r1_gamma=0.05 model.r2_gamma=0.05 seed=1,2,3 $STUDY \
  'hydra.sweep.subdir=rpgan_${hydra.job.num}' &
wait
genlab-compare multirun/stacked_mnist --metric val/modes_calibrated --metric val/mode_kl_calibrated \
  --metric val/modes --metric val/mode_kl
