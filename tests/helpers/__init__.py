"""Helpers the tests share (imported as ``helpers.<module>``; pytest puts tests/ on the path):

- ``helpers.core``: the repository's folders, config composition, ``TINY_MODEL``, child processes, waiting;
- ``helpers.rasters``: GeoTIFF writing, the real samples beside the repository, tiny chip settings;
- ``helpers.detection``: a box chip dataset written directly in the chip contract.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository's root."""

LIMIT_S = 3600
"""The one limit of every child process and wait in the tests: a guard against a hang, never a speed check.
It stands far above what any step takes on the slowest machine kind (AVX2 only, fp32, two tests sharing
two cores): the slowest step there, a detector's training, is some 5 minutes."""
