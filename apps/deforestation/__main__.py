"""python -m apps.deforestation [overrides]: train change detection on Sentinel-2 pairs (-m for a sweep)."""

from apps.core.training.train import hydra_task
from apps.foundation.cli import run_hydra_app


def main() -> None:
    run_hydra_app(hydra_task, "deforestation")


if __name__ == "__main__":
    main()
