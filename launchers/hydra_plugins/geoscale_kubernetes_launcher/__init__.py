"""geoscale's Hydra launcher that runs each sweep point as a Kubernetes Job."""
