"""The study's pretrained checkpoints: ``python -m apps.weights fetch`` fills weights_dir from the catalogue."""
