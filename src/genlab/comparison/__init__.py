"""The work of genlab-compare: read runs offline, tabulate them with seeds folded, plot curves.

- ``runs``: a run directory (``.hydra/``, ``csv/metrics.csv`` or W&B offline files) as a ``Run``
- ``tables``: ``compare(root)``, the per-run and seed-aggregated tables and their text forms
- ``plots``: metric curves per setting, and every output file of a comparison
"""
