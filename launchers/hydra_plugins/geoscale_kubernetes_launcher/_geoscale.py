"""What the Kubernetes launcher knows of geoscale's apps, behind one adapter (:class:`PointAdapter`):
whether a point trains, the overrides that fit it to its pod, and how its result comes back (the pod
log's result line, the run directory's metrics record). Any other Hydra app runs too: it does not
train, its pod gets no overrides beyond its own, and its return value comes back when its pod prints
a result line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig

from apps.foundation.rundir import ResultLine, RunRecord, read_completed, write_metrics, write_upload_record

OUTPUT_ROOT_KEY = "output_root"
"""The run layout's root setting (conf/run.yaml); a pod's is the parent of its sweep on the shared volume."""


NO_RESULT = ResultLine(objective=None, value=None, record=None)
"""What a pod that printed no result line returned."""


def overridden_keys(overrides: Sequence[str]) -> set[str]:
    """The config keys ``overrides`` set, without their ``+``/``~`` prefixes."""
    return {override.split("=", 1)[0].lstrip("+~") for override in overrides}


def trainer_overrides(settings: Mapping[str, Any], overrides: Sequence[str]) -> list[str]:
    """Overrides that fit the trainer to its pod: ``trainer.num_nodes`` for multi-node points and
    ``trainer.devices`` = the pod's GPUs (so Lightning's world is num_nodes x GPUs, as WORLD_SIZE
    says, and no requested GPU sits idle). A key the point overrides itself is left to it."""
    fitted: dict[str, int] = {}
    if settings["num_nodes"] > 1:
        fitted["trainer.num_nodes"] = settings["num_nodes"]
    if settings["gpus"] > 0 or settings["num_nodes"] > 1:
        fitted["trainer.devices"] = max(settings["gpus"], 1)
    given = overridden_keys(overrides)
    return [f"{key}={value}" for key, value in fitted.items() if key not in given]


class PointAdapter:
    """A sweep point as a geoscale run, for the launcher's ``settings`` (``hydra.launcher``)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings

    @staticmethod
    def trains(config: DictConfig) -> bool:
        """Whether the point's app trains (its config has a ``trainer``): its pods then ask for GPUs."""
        return "trainer" in config

    def pod_overrides(self, config: DictConfig, overrides: Sequence[str], pod_root: str) -> list[str]:
        """What the point's pod runs with beyond its own ``overrides``: ``output_root=<pod_root>`` where the
        app has one the point does not set (runs are named below the output root where they are copied:
        <sweep>/<num>, as here), and for an app that trains, :func:`trainer_overrides`."""
        extra = [] if OUTPUT_ROOT_KEY not in config or OUTPUT_ROOT_KEY in overridden_keys(overrides) else [
            f"{OUTPUT_ROOT_KEY}={pod_root}"]
        fitted = trainer_overrides(self.settings, [*overrides, *extra]) if self.trains(config) else []
        return extra + fitted

    @staticmethod
    def completed(run_dir: Path) -> RunRecord | None:
        """The record of a point whose run directory holds a completed one (its ``value`` is what the
        point returns), else None."""
        return read_completed(run_dir)

    @staticmethod
    def result_of(log: str) -> ResultLine:
        """What a finished pod's ``log`` (its tail) reports: its last result line, else NO_RESULT."""
        return ResultLine.last_in(log) or NO_RESULT

    @staticmethod
    def keep(run_dir: Path, result: ResultLine) -> None:
        """Write a pod's metrics record into the local run dir (the pod's is on a volume not mounted here),
        with where it was uploaded (where reproduce finds what stayed on that volume), unless already there."""
        if result.record is not None and read_completed(run_dir) is None:
            write_metrics(run_dir, result.record)
            if result.uploaded_to:
                write_upload_record(run_dir, result.uploaded_to)
