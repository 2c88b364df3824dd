"""``python -m apps.report SWEEP_DIR``: a sweep's runs as one table (Markdown or CSV) and a figure."""
