"""python -m apps.detection [overrides]: train an MMDetection detector on a chip dataset (-m for a sweep)."""

from apps.core.training.train import hydra_task
from apps.foundation.cli import run_hydra_app


def main() -> None:
    run_hydra_app(hydra_task, "detection")


if __name__ == "__main__":
    main()
