"""Finished runs: sweep reports, the study's tables, uploads and fetches of run directories."""
