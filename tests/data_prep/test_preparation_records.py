"""The typed preparation records: each prep's record survives dataset.json and a checkpoint as itself."""

from __future__ import annotations

import json
import logging

import pytest

from apps.foundation.chips import ChipPreparation
from data_prep.burned_area import BurnedAreaPreparation
from data_prep.deforestation import DeforestationPreparation
from data_prep.detection import DetectionPreparation
from data_prep.detection_formats import DotaSettings
from data_prep.normalize import NormalizeSettings
from data_prep.prodes import ProdesSettings
from data_prep.sentinel2 import Sentinel2Settings

RECORDS = [
    BurnedAreaPreparation(chip_size=64, overlap=0.25, bands=("B04", "B03", "B02"), skipped={"s": "label: none"},
                          stride=48, normalize=NormalizeSettings(2.0, 98.0), split={"method": "scenes"}),
    DeforestationPreparation(chip_size=256, overlap=0.5, bands=("nirrg", "ndvi"), augment_rotations=(90, 180),
                             stretch=NormalizeSettings(), sentinel2=Sentinel2Settings(), prodes=ProdesSettings(),
                             percentiles={"area_1": {"before": [1, 2]}}),
    DetectionPreparation(chip_size=512, overlap=0.2, bands=(3, 2, 1), format="dota", classes=("plane", "ship"),
                         dota=DotaSettings(), stretch=NormalizeSettings(1.0, 99.5), ignore_cut=True),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_a_record_reads_back_as_itself_through_json(record):
    attrs = json.loads(json.dumps(record.to_attrs()))
    assert type(record).from_attrs(attrs) == record
    assert ChipPreparation.from_attrs(attrs) == ChipPreparation(record.chip_size, record.overlap, record.bands,
                                                                record.skipped)


def test_an_older_record_lacks_fields_and_their_defaults_apply_with_a_warning(caplog):
    record = BurnedAreaPreparation.from_attrs({"chip_size": 128, "unknown_later_field": 1})
    assert (record.chip_size, record.overlap, record.normalize) == (128, None, None)
    with caplog.at_level(logging.WARNING):
        assert record.recorded("normalize", NormalizeSettings()) == NormalizeSettings()
    assert "recorded no normalize settings: using the defaults" in caplog.text
    assert RECORDS[0].recorded("normalize", NormalizeSettings()) == NormalizeSettings(2.0, 98.0)
