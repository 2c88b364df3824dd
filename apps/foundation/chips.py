"""The chip-dataset contract: how prepared training chips are laid out on disk and read back.

A chip dataset is one directory::

    <root>/dataset.json                      written last: its presence marks the dataset complete
    <root>/manifest.csv                      one row per chip (MANIFEST_COLUMNS)
    <root>/scenes/<scene>/<array>.npy        per-scene chip arrays, uint8, row i = the scene's chip i

Image arrays are (N, C, H, W) uint8, label arrays (N, H, W) uint8 holding class indices
with ``ignore_index`` (255) where the source had no data. Arrays are memory-mapped on read,
so a DataLoader worker touches only the chips it serves.

Chips stay georeferenced: each manifest row holds the chip's pixel window in its source raster,
the raster CRS (WKT) and the chip's own affine transform (a, b, c, d, e, f), so a prediction can
be written back onto the map. ``sources`` (a JSON list) names every source product of the chip:
both dates of a change-detection pair.

``dataset.json`` describes each array name by ``kind``: ``image`` (channels, bands, and for a pair
its ``date``), ``label`` (class indices) or ``boxes`` (objects for detection). A ``boxes`` array is
one float32 (M, 7) table per scene, ``scenes/<scene>/<name>.npy``, rows ``BOX_COLUMNS`` sorted by
chip index: the chip's row ``index``, the box corners x1, y1, x2, y2 in pixels of the chip (x right,
y down, x2/y2 exclusive), the class index into ``classes`` and an ignore flag (1: a region that is
neither a positive nor a negative, such as a difficult object). A detection dataset also holds one
COCO JSON per split (``coco/<split>.json``, image ``file_name`` = chip id, category ids = class
index + 1, ignored objects as ``iscrowd`` 1), for tools that read COCO. Which chips are kept and how
they are split are settings of each app's prep, not of the contract.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, get_args, get_origin, get_type_hints

import numpy as np

from apps.foundation.errors import InputError
from apps.foundation.files import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FORMAT = "geoscale-chips/2"
"""Version 2: manifest ``sources`` (every source product of a chip) and per-scene ``splits`` counts."""
INDEX_FILE = "dataset.json"
MANIFEST_FILE = "manifest.csv"
SPLITS = ("train", "val", "test")
IGNORE_INDEX = 255
BOX_COLUMNS = ("chip", "x1", "y1", "x2", "y2", "class", "ignore")
"""Columns of a ``boxes`` array (float32 (M, 7), rows sorted by chip)."""
COCO_DIR = "coco"
"""Folder of a detection dataset's per-split COCO JSON files (``coco/<split>.json``)."""
MANIFEST_COLUMNS = (
    "chip_id", "split", "scene", "index", "sources",
    "col_off", "row_off", "width", "height",
    "crs", "a", "b", "c", "d", "e", "f",
    "nodata_fraction",
)
"""Fixed manifest columns; one ``fraction_<class>`` column per class follows them."""


@dataclass(frozen=True)
class ChipRecord:
    """One manifest row: where a chip came from and what it holds.

    ``scene`` names the chip arrays the chip is row ``index`` of; ``sources`` lists every source
    product of the chip (one for a segmentation chip, the before and after products of a pair).
    """

    chip_id: str
    split: str
    scene: str
    index: int
    sources: tuple[str, ...]
    col_off: int
    row_off: int
    width: int
    height: int
    crs: str
    transform: tuple[float, float, float, float, float, float]
    nodata_fraction: float
    class_fractions: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ChipPreparation:
    """How a dataset's chips were made, as its prep records it in ``dataset.json``'s ``attrs`` (and a
    checkpoint carries it on): window size ``chip_size`` (px), ``overlap`` (fraction of a window),
    ``bands`` (the input bands, band combinations or 1-based band numbers, in order; None where the
    prep takes the image's own) and ``skipped`` (scene -> why it gave no chip). Each prep records a
    subclass with its own settings (``data_prep.burned_area.BurnedAreaPreparation``, ...); prediction
    slides windows of the same geometry over a whole scene and makes its pixels with the same settings.
    A field that an older dataset did not record is None."""

    chip_size: int | None = None
    overlap: float | None = None
    bands: tuple[str | int, ...] | None = None
    skipped: dict[str, str] | None = None

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> "ChipPreparation":
        """The record of ``attrs``: the fields this class declares (settings dataclasses rebuilt from their
        dicts, lists as tuples); entries it does not declare are left out."""
        hints = get_type_hints(cls)
        values = {}
        for name in (f.name for f in fields(cls)):
            if attrs.get(name) is not None:
                values[name] = _typed(attrs[name], hints[name])
        return cls(**values)

    def to_attrs(self) -> dict:
        """The JSON-ready ``attrs`` entries (settings as dicts, tuples as lists) that ``from_attrs`` reads back."""
        return json.loads(json.dumps(asdict(self), default=str))

    def recorded(self, name: str, default):
        """Field ``name``, or ``default`` with a warning where the dataset did not record it."""
        value = getattr(self, name)
        if value is None:
            log.warning("the checkpoint's training dataset recorded no %s settings: using the defaults", name)
            return default
        return value


def _typed(value, hint):
    """``value`` read from JSON as the annotation ``hint`` says: a dataclass from its dict, a tuple from a list."""
    for kind in get_args(hint) or (hint,):
        if is_dataclass(kind) and isinstance(value, Mapping):
            return kind(**value)
        if (get_origin(kind) or kind) is tuple and isinstance(value, list):
            return tuple(value)
    return value


def scene_array_paths(scene: str, names: Iterable[str]) -> dict[str, str]:
    """Array name -> path of the scene's ``<name>.npy``, relative to the dataset root."""
    return {name: str(Path("scenes") / scene / f"{name}.npy") for name in names}


class ChipArrayWriter:
    """Appends chips, in index order, to a uint8 ``.npy`` file of a fixed shape (first axis = chip).

    Writing sequentially keeps memory flat however many chips a scene has.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape, self.written = Path(path), tuple(int(n) for n in shape), 0
        self._file = self.path.open("wb")
        np.lib.format.write_array_header_1_0(
            self._file, {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": self.shape}
        )

    def append(self, chips: np.ndarray) -> None:
        """Write the next chip(s): one (*shape[1:]) chip or a (k, *shape[1:]) block, uint8."""
        chips = np.asarray(chips)
        block = chips[None] if chips.ndim == len(self.shape) - 1 else chips
        if block.dtype != np.uint8 or block.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path.name}: got {block.dtype} {block.shape[1:]}, expected uint8 {self.shape[1:]}")
        if self.written + len(block) > self.shape[0]:
            raise ValueError(f"{self.path.name}: more than the {self.shape[0]} chips declared")
        self._file.write(np.ascontiguousarray(block).data)
        self.written += len(block)

    def close(self) -> None:
        """Close the file (closing again does nothing)."""
        self._file.close()

    def finish(self) -> None:
        """Close the file; ValueError unless exactly the declared number of chips was written."""
        self.close()
        if self.written != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.written} chips written, {self.shape[0]} declared")


@contextmanager
def scene_array_writer(
    root: Path, scene: str, shapes: Mapping[str, tuple[int, ...]]
) -> Iterator[tuple[dict[str, ChipArrayWriter], Path]]:
    """Open one scene's uint8 chip arrays (name -> shape, first axis = chip) for appending chips.

    Yields (name -> ChipArrayWriter, temporary scene directory); other files that belong with the
    arrays may be written into that directory. On normal exit every array must be complete; the
    directory is then renamed to ``root/scenes/<scene>/``, replacing an older one, so a scene
    directory either holds everything or does not exist. On error it is removed.
    """
    root = Path(root)
    lengths = {name: shape[0] for name, shape in shapes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"scene {scene}: chip arrays differ in length: {lengths}")
    writers: dict[str, ChipArrayWriter] = {}
    with atomic_path(root / "scenes" / scene) as tmp:
        tmp.mkdir()
        try:
            writers.update({name: ChipArrayWriter(tmp / f"{name}.npy", shape) for name, shape in shapes.items()})
            yield writers, tmp
            for writer in writers.values():
                writer.finish()
        finally:
            for writer in writers.values():
                writer.close()


def save_scene_boxes(scene_dir: Path, name: str, boxes: np.ndarray) -> None:
    """Write a scene's ``boxes`` table (M, 7) (``BOX_COLUMNS``) as ``scene_dir/<name>.npy``, rows sorted
    by chip; ``scene_dir`` is the temporary directory of ``scene_array_writer``."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, len(BOX_COLUMNS))
    order = np.argsort(boxes[:, 0], kind="stable")
    np.save(Path(scene_dir) / f"{name}.npy", boxes[order])


def chip_boxes(table: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The objects of chip ``index`` in a scene's ``boxes`` table (``ChipDataset.open_array``):
    boxes float32 (N, 4) xyxy px, labels int64 (N,), ignore bool (N,)."""
    start, stop = np.searchsorted(table[:, 0], [index, index + 1])
    rows = np.asarray(table[start:stop])
    return rows[:, 1:5].copy(), rows[:, 5].astype(np.int64), rows[:, 6] > 0


def save_scene_arrays(root: Path, scene: str, arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Store one scene's chip arrays under ``root/scenes/<scene>/`` atomically.

    The arrays are written into a temporary directory that is renamed into place, so a scene
    directory either holds all its arrays or does not exist. Returns array name -> path
    relative to ``root``.
    """
    with scene_array_writer(root, scene, {name: arr.shape for name, arr in arrays.items()}) as (writers, _):
        for name, arr in arrays.items():
            writers[name].append(arr)
    return scene_array_paths(scene, arrays)


def write_dataset_index(
    root: Path,
    records: Sequence[ChipRecord],
    scenes: Mapping[str, Mapping],
    classes: Sequence[str],
    arrays: Mapping[str, Mapping],
    preparation: ChipPreparation = ChipPreparation(),
) -> Path:
    """Write ``manifest.csv`` and then ``dataset.json``, completing the dataset at ``root``.

    ``scenes`` maps scene id -> {"splits": {split: chips}, "arrays": {name: relative path}, ...};
    ``arrays`` describes each array name ({"kind": "image"|"label", "channels", "bands", ...});
    ``preparation``, how the chips were made, becomes the ``attrs``.
    """
    root = Path(root)
    fraction_cols = [f"fraction_{c}" for c in classes]
    with atomic_path(root / MANIFEST_FILE) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*MANIFEST_COLUMNS, *fraction_cols])
        for r in records:
            writer.writerow([
                r.chip_id, r.split, r.scene, r.index, json.dumps(list(r.sources)),
                r.col_off, r.row_off, r.width, r.height,
                r.crs, *(repr(float(v)) for v in r.transform),
                f"{r.nodata_fraction:.6f}",
                *(f"{r.class_fractions.get(c, 0.0):.6f}" for c in classes),
            ])
    counts = {s: sum(1 for r in records if r.split == s) for s in SPLITS}
    index = {
        "format": FORMAT,
        "classes": list(classes),
        "ignore_index": IGNORE_INDEX,
        "arrays": {k: dict(v) for k, v in arrays.items()},
        "splits": counts,
        "scenes": {k: dict(v) for k, v in scenes.items()},
        "attrs": preparation.to_attrs(),
    }
    path = root / INDEX_FILE
    atomic_write_text(path, json.dumps(index, indent=2, default=str))
    return path


def invalidate_dataset(out_dir: Path) -> None:
    """Remove ``dataset.json`` (and the manifest), marking the dataset incomplete while it changes."""
    for name in (INDEX_FILE, MANIFEST_FILE):
        (Path(out_dir) / name).unlink(missing_ok=True)


PREP_FOLDERS = ("scenes", "work")
"""Folders a data prep writes into its out_dir before dataset.json: chip arrays, and intermediate rasters."""


class ChipDataset:
    """A complete chip dataset opened for reading.

    Raises InputError naming the directory when it is missing, incomplete (no ``dataset.json``:
    data prep did not finish) or of another format.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        index_path = self.root / INDEX_FILE
        if not self.root.is_dir():
            raise InputError(f"chip dataset {self.root}: directory not found (run data prep first)")
        if not index_path.is_file():
            if not any((self.root / name).is_dir() for name in PREP_FOLDERS):
                raise InputError(f"chip dataset {self.root}: not a chip dataset (no dataset.json, nor a data prep's "
                                 f"{' or '.join(f'{name}/' for name in PREP_FOLDERS)}): point it at the out_dir of "
                                 "the app's data prep")
            raise InputError(
                f"chip dataset {self.root}: incomplete, no dataset.json (data prep did not finish; re-run it)"
            )
        try:
            self.index = json.loads(index_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"chip dataset {index_path}: unreadable ({exc})") from None
        if self.index.get("format") != FORMAT:
            raise InputError(f"chip dataset {self.root}: format {self.index.get('format')!r}, expected {FORMAT!r}")
        self.classes: list[str] = list(self.index["classes"])
        self.ignore_index: int = int(self.index["ignore_index"])
        self.arrays: dict[str, dict] = self.index["arrays"]
        self.attrs: dict = self.index.get("attrs", {})
        self._records: list[ChipRecord] | None = None

    @property
    def records(self) -> list[ChipRecord]:
        """All manifest rows, in manifest order."""
        if self._records is None:
            self._records = list(_read_manifest(self.root / MANIFEST_FILE, self.classes))
        return self._records

    def split_records(self, split: str) -> list[ChipRecord]:
        """The rows of one split; InputError if the split is unknown or holds no chip."""
        if split not in SPLITS:
            raise InputError(f"chip dataset {self.root}: unknown split {split!r} (expected one of {SPLITS})")
        rows = [r for r in self.records if r.split == split]
        if not rows:
            counts = self.index.get("splits", {})
            raise InputError(f"chip dataset {self.root}: split '{split}' has no chips (splits: {counts})")
        return rows

    def require_array(self, name: str) -> dict:
        """The description of array ``name``; InputError naming the available ones if absent."""
        if name not in self.arrays:
            raise InputError(
                f"chip dataset {self.root}: has no '{name}' chips (available: {', '.join(sorted(self.arrays))})"
            )
        return self.arrays[name]

    def open_array(self, scene: str, name: str) -> np.ndarray:
        """Memory-map one scene's array ``name``: (N, C, H, W) for images, (N, H, W) for labels."""
        rel = self.index["scenes"][scene]["arrays"][name]
        path = self.root / rel
        if not path.is_file():
            raise InputError(f"chip dataset {self.root}: missing array file {rel}")
        return np.load(path, mmap_mode="r")


def _read_manifest(path: Path, classes: Iterable[str]) -> Iterable[ChipRecord]:
    if not path.is_file():
        raise InputError(f"chip dataset {path.parent}: manifest.csv missing")
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            yield ChipRecord(
                chip_id=row["chip_id"], split=row["split"], scene=row["scene"], index=int(row["index"]),
                sources=tuple(json.loads(row["sources"])), col_off=int(row["col_off"]), row_off=int(row["row_off"]),
                width=int(row["width"]), height=int(row["height"]), crs=row["crs"],
                transform=tuple(float(row[k]) for k in "abcdef"),
                nodata_fraction=float(row["nodata_fraction"]),
                class_fractions={c: float(row[f"fraction_{c}"]) for c in classes},
            )
