"""python -m apps.burned_area [overrides]: train burned-area segmentation (-m for a sweep)."""

from apps.foundation.cli import run_hydra_app
from apps.core.training.train import hydra_task


def main() -> None:
    run_hydra_app(hydra_task, "burned_area")


if __name__ == "__main__":
    main()
