"""Helpers the tests share (imported as ``helpers.<module>``; pytest puts tests/ on the path):

- ``helpers.core``: the repository's folders, config composition, ``TINY_MODEL``, child processes, waiting;
- ``helpers.rasters``: GeoTIFF writing, the real samples beside the repository, tiny chip settings;
- ``helpers.detection``: a box chip dataset written directly in the chip contract.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository's root."""
