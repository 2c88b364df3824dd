"""The training runtime: config in, a Lightning Trainer, a run directory and its record out."""
