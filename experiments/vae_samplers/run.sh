#!/bin/bash
# The VAE samplers study (experiments/vae_samplers/README.md): train, fit the samplers, score,
# tabulate. One thread per process; about 40 minutes on one idle core.
#   bash experiments/vae_samplers/run.sh [STUDY_DIR]   (default multirun/vae_samplers)
set -euo pipefail
export OMP_NUM_THREADS=1
OUT=${1:-multirun/vae_samplers}
ROOT=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
COMMON="data=fashion_mnist data.root=$ROOT data.batch_size=100 data.val_fraction=0.02 trainer=cpu logger=csv metrics=none callbacks=last_checkpoint"

# Part 1, samplers: grey levels under a Bernoulli decoder (pythae's protocol), 1,200 steps
SAMPLERS="$COMMON trainer.max_steps=1200 model.nll_k=0 hydra.sweep.dir=$OUT/samplers"
genlab-train -m model=vae seed=1,2,3 $SAMPLERS 'hydra.sweep.subdir=vae_${hydra.job.num}'
genlab-train -m model=vae model.prior=vamp seed=1,2,3 $SAMPLERS 'hydra.sweep.subdir=vamp_${hydra.job.num}'
python experiments/vae_samplers/classifier.py   # once; later evaluations load it from the cache
SCORE="metrics=fid metrics.backbone=classifier metrics.num_samples=10000 split=test nll_k=0 trainer=cpu"
TWO_STAGE="sampler.width=256 sampler.epochs=20 sampler.batch_size=256 sampler.lr=0.001"
for run in "$OUT"/samplers/*/; do
  genlab-eval ckpt_path="${run}checkpoints/last.ckpt" sampler=prior $SCORE
  genlab-eval ckpt_path="${run}checkpoints/last.ckpt" sampler=gmm $SCORE
  genlab-eval ckpt_path="${run}checkpoints/last.ckpt" sampler=two_stage $TWO_STAGE $SCORE
done

# Part 2, likelihoods: binarised images, 600 steps (experiments/fashion_mnist_likelihoods)
LIKELIHOODS="$COMMON data.binarize=true trainer.max_steps=600 hydra.sweep.dir=$OUT/likelihoods"
genlab-train -m model=vae seed=1,2,3 $LIKELIHOODS 'hydra.sweep.subdir=vae_${hydra.job.num}'
genlab-train -m model=vae model.posterior=iaf seed=1,2,3 $LIKELIHOODS 'hydra.sweep.subdir=iaf_${hydra.job.num}'
genlab-train -m model=ladder_vae seed=1,2,3 $LIKELIHOODS 'hydra.sweep.subdir=ladder_${hydra.job.num}'
for run in "$OUT"/likelihoods/*/; do
  genlab-eval ckpt_path="${run}checkpoints/last.ckpt" metrics=none nll_k=20 trainer=cpu
done

python experiments/vae_samplers/table.py "$OUT"
