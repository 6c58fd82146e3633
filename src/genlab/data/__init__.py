"""Images in, ``(images, labels)`` batches out: the DataModule and what it is built from.

- ``datamodule``: ``ImageDataModule``, the one DataModule of every model (splits, loaders)
- ``sources``: where images come from (bundled MNIST-5k, Stacked MNIST, synthetic, torchvision
  sets, folders)
- ``idx``: MNIST's IDX files; ``prepared``: genlab-prepare's memory-mapped format
- ``datasets``: the Dataset classes and one-call batches; ``transforms``: pixel conversions
- ``loading``: resumable sampling and loading (exact mid-epoch resume)
"""

from genlab.data.datamodule import ImageDataModule

__all__ = ["ImageDataModule"]
