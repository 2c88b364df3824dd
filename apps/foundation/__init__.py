"""The foundation layer of geoscale: what every other layer may use and that uses nothing of theirs.

One-line errors and exit codes, atomic file writes, the run-directory layout, the chip-dataset
contract and the Hydra-app runner. Nothing here imports torch or Hydra at import time.
"""
