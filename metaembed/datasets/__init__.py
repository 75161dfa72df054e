"""Real data from Debian packages: fixed splits, the public eval-set builders, and training sources.

Modules: ``tuxpaint``, ``fmnist``, ``manuals``, ``openclipart`` (one loader per package),
``build`` (eval sets; CLI ``python -m metaembed.datasets build``), ``training`` (``SOURCES``). The task
instructions both use belong to the encoder (:mod:`metaembed.models.instructions`). Nothing here installs
packages: a missing one raises ``MissingDataError`` naming it.
"""

from metaembed.datasets._assets import MissingDataError

__all__ = ["MissingDataError"]
