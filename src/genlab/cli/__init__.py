"""The console doors: genlab-train, -eval, -sample, -compare and -prepare.

Each parses its config, checks whatever needs no torch, then hands over to the work named for
what it does (``genlab.training``, ``evaluation``, ``sampling``, ``comparison``, ``preparation``).
Nothing here imports torch, Lightning, torchmetrics, W&B or matplotlib at module level, so
``--help``, ``--cfg job`` and config errors answer at once; and nothing but the console
scripts imports from here.
"""
