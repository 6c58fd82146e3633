"""genlab's SLURM launcher where Hydra looks for one.

Hydra instantiates plugins only from classes defined in the ``hydra_plugins`` package (its
plugin scan imports every module here at start-up, so this stays light); the work lives in
``genlab.launchers``.
"""

from genlab.launchers import SlurmLauncher as GenlabSlurmLauncher


class SlurmLauncher(GenlabSlurmLauncher):
    """``genlab.launchers.SlurmLauncher`` under a name Hydra accepts as a plugin."""
