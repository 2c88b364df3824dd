"""The training core: what two or more apps share.

- ``training``: the one training entry (``train``), the Trainer, precision, callbacks, run provenance
- ``tasks``: the task family (``BaseTask``; pixel-wise ``SegmentationTask``), chip data modules, losses,
  pretrained-weight lookup
- ``prediction``: whole-scene prediction (checkpoint loading, sliding windows, GeoTIFF and GeoJSON)
- ``runs``: reading finished runs: sweep reports, the study's tables, uploads and fetches of run directories
- ``config``: instantiating config nodes, composing app configs, and the names that moved
"""
