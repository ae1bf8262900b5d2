"""Pascal VOC reader: annotations, image sets, class lists and a PyTorch dataset.

Coordinates: VOC XML stores 1-based, inclusive pixel indices. The reader converts
them once, ``x_min = xmin - 1, y_min = ymin - 1, x_max = xmax, y_max = ymax``, to
0-based continuous pixel coordinates, so a box over pixels 1..10 becomes [0, 10]
with width 10. Plain IoU on converted boxes (``torchvision.ops.box_iou``) equals
the devkit's "+1 pixel" IoU on the original numbers.

Every check runs while loading, so bad data raises one ``DataError`` before any
training starts.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import math
import os
import re
import warnings
import xml.etree.ElementTree as StdET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeET
import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# Searched in this order when several files share an id.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_YEAR_FOLDER = re.compile(r"VOC\d{4}")
_XML_DECLARATION = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
# Loading fewer files than this shows no progress bar (it would only flicker).
_PROGRESS_MIN_FILES = 2000


class DataError(ValueError):
    """Invalid or missing input data. The message names the file, the value and the fix."""


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image.

    Attributes:
        image_id: id from the image-set file, e.g. "000005".
        image_path: the image file, found as JPEGImages/<id>.<ext>.
        annotation_path: the XML file, Annotations/<id>.xml.
        width, height: size of the image file in pixels (read from its header).
        boxes: (N, 4) float32 continuous xyxy in pixels, clipped to the image.
        labels: (N,) int64 indices into the class list.
        difficult: (N,) bool, VOC's "difficult" flag.
    """

    image_id: str
    image_path: Path
    annotation_path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


@dataclass(frozen=True)
class VOCSplit:
    """The records of one or more image sets, with the class list they index.

    Attributes:
        root: the folder passed to the loader.
        image_sets: names as given, e.g. ("2007/trainval", "2012/trainval").
        classes: class names; ``labels`` index this tuple.
        records: one per image id, in image-set file order, duplicates removed.
        fingerprint: sha256 hex of the ids, the annotation file bytes and the class list.
        n_clipped_boxes: boxes clipped to the image while loading.
        n_dropped_boxes: zero-area boxes removed while loading.
    """

    root: Path
    image_sets: tuple[str, ...]
    classes: tuple[str, ...]
    records: tuple[ImageRecord, ...]
    fingerprint: str = ""
    n_clipped_boxes: int = 0
    n_dropped_boxes: int = 0

    @property
    def is_voc(self) -> bool:
        """True when the class list is the 20 Pascal VOC classes."""
        return self.classes == VOC_CLASSES

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class _Annotation:
    """An annotation file parsed but not yet tied to a class list or an image size."""

    image_id: str
    year_dir: Path
    image_path: Path
    annotation_path: Path
    digest: str
    names: list[str]
    voc_boxes: np.ndarray  # (N, 4) float64, 1-based inclusive as written in the file
    difficult: np.ndarray  # (N,) bool
    xml_size: tuple[int, int] | None  # (width, height), None when missing or 0
    image_size: tuple[int, int] = (0, 0)


@dataclass
class _LoadStats:
    clipped_boxes: int = 0
    clipped_files: list[Path] = field(default_factory=list)
    dropped_boxes: int = 0
    dropped_files: list[Path] = field(default_factory=list)
    size_mismatch_files: list[Path] = field(default_factory=list)
    size_missing_files: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Folder layout and image sets


def _is_year_dir(path: Path) -> bool:
    return (path / "Annotations").is_dir() or (path / "ImageSets").is_dir()


def _check_plain_name(value: str, kind: str, source: Path | str) -> None:
    """Raise DataError unless ``value`` is a plain file name (no folder part)."""
    bad = (
        not value
        or value in (".", "..")
        or "/" in value
        or "\\" in value
        or "\x00" in value
        or ":" in value
        or os.path.isabs(value)
    )
    if bad:
        raise DataError(
            f"{source}: invalid {kind} {value!r}: it must be a plain file name without folders, "
            f"'..' or a drive. Fix: list bare ids such as 000005, one per line."
        )


def _find_devkit(root: Path) -> Path:
    """Return ``root``, or ``root/VOCdevkit`` when the user passed the folder above it."""
    if not root.is_dir():
        raise DataError(
            f"data folder not found: {root}. Fix: pass a VOCdevkit folder or one VOC year folder "
            f"(a folder containing Annotations/, JPEGImages/ and ImageSets/Main/)."
        )
    if not _is_year_dir(root) and (root / "VOCdevkit").is_dir():
        return root / "VOCdevkit"
    return root


def _year_dirs(devkit: Path) -> list[Path]:
    return sorted(p for p in devkit.iterdir() if p.is_dir() and p.name.startswith("VOC") and _is_year_dir(p))


def resolve_image_set(root: str | Path, name: str) -> tuple[Path, str]:
    """Find the year folder and split of an image-set name.

    Args:
        root: a VOCdevkit folder, one VOC year folder, or the folder containing VOCdevkit.
        name: "YEAR/SPLIT" (e.g. "2007/trainval") or "SPLIT" alone when ``root`` is a year
            folder or a VOCdevkit with exactly one VOC* folder.

    Returns:
        (year folder, split name). The image-set file is ``year/ImageSets/Main/<split>.txt``.
    """
    devkit = _find_devkit(Path(root))
    year, _, split = name.rpartition("/")
    _check_plain_name(split, "image-set name", name)

    if year:
        if _is_year_dir(devkit) and devkit.name == f"VOC{year}":
            return devkit, split
        candidate = devkit / f"VOC{year}"
        if _is_year_dir(candidate):
            return candidate, split
        found = ", ".join(p.name for p in _year_dirs(devkit)) or "none"
        raise DataError(
            f"{devkit}: year folder VOC{year} for image set {name!r} not found (year folders: {found}). "
            f"Fix: pass the VOCdevkit folder that contains VOC{year}, or name an existing year."
        )

    if _is_year_dir(devkit):
        return devkit, split
    years = _year_dirs(devkit)
    if len(years) == 1:
        return years[0], split
    if not years:
        raise DataError(
            f"{devkit}: no VOC year folder found (expected Annotations/ and ImageSets/Main/ in it "
            f"or in a VOC* folder inside it). Fix: pass a VOCdevkit folder or one VOC year folder."
        )
    names = ", ".join(p.name for p in years)
    raise DataError(
        f"{devkit}: image set {name!r} is ambiguous because the folder contains several year folders ({names}). "
        f"Fix: name the year, e.g. {years[0].name[3:]}/{split}."
    )


def available_image_sets(root: str | Path) -> list[str]:
    """List the image-set names present under ``root``, in the order trainval, train, val, test, others.

    Class-specific files such as ``aeroplane_train.txt`` are left out. Names carry the
    year ("2007/test") when ``root`` is a VOCdevkit folder, and are bare ("test") for a
    year folder.
    """
    devkit = _find_devkit(Path(root))
    year_dirs = [devkit] if _is_year_dir(devkit) else _year_dirs(devkit)
    order = {"trainval": 0, "train": 1, "val": 2, "test": 3}

    names = []
    for year_dir in year_dirs:
        main = year_dir / "ImageSets" / "Main"
        splits = [p.stem for p in main.glob("*.txt")] if main.is_dir() else []
        splits = [s for s in splits if "_" not in s]
        splits.sort(key=lambda s: (order.get(s, len(order)), s))
        prefix = "" if year_dir == devkit else f"{year_dir.name[3:]}/"
        names.extend(prefix + s for s in splits)
    return names


def _decode_text_file(raw: bytes, path: Path) -> str:
    """Decode a text file whose byte-order mark, if any, gives the encoding (UTF-8 otherwise)."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not valid {encoding} text ({error}). Fix: save the file as UTF-8."
        ) from None


def read_image_set(year_dir: Path, split: str) -> list[str]:
    """Read the ids listed in ``year_dir/ImageSets/Main/<split>.txt``.

    Only the first column counts, so class-specific files ("000005 -1") work too.
    Byte-order marks (UTF-8, UTF-16) and Windows line ends are removed.

    Raises:
        DataError: the file is missing, lists no ids, or lists an id that is not a plain file name.
    """
    path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        present = available_image_sets(year_dir)
        raise DataError(
            f"image-set file not found: {path}. Image sets present: {', '.join(present) or 'none'}. "
            f"Fix: pass one of those names, or create the file with one image id per line."
        )

    text = _decode_text_file(path.read_bytes(), path)
    ids = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        _check_plain_name(parts[0], "image id", path)
        ids.append(parts[0])

    if not ids:
        raise DataError(f"{path}: the image set is empty (no image ids). Fix: list one image id per line.")
    return ids


# ---------------------------------------------------------------------------
# Annotation files


def _decode_xml(raw: bytes, path: Path) -> str:
    """Decode XML bytes to text in Python, so encodings that expat rejects (gb2312, gbk) work."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif raw.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    else:
        match = _XML_DECLARATION.match(raw)
        encoding = match.group(1).decode("ascii") if match else "utf-8"

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(
            f"{path}: unknown encoding {encoding!r} in the XML declaration. "
            f"Fix: save the file as UTF-8 and declare encoding=\"utf-8\"."
        ) from None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: the bytes are not valid {encoding} ({error}). "
            f"Fix: save the file in the encoding its XML declaration names (UTF-8 by default)."
        ) from None


def _parse_float(text: str | None, tag: str, path: Path, index: int) -> float:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(
            f"{path}: object {index}: <{tag}> is {text!r}, expected a number. "
            f"Fix: give every <bndbox> numeric <xmin>, <ymin>, <xmax> and <ymax> fields."
        )
    return value


def _parse_size(root: StdET.Element, path: Path) -> tuple[int, int] | None:
    """Return (width, height) from <size>, or None when it is missing, not a number or 0.

    Raises:
        DataError: the size is infinite or larger than any image the reader accepts.
    """
    size = root.find("size")
    if size is None:
        return None
    width_text = size.findtext("width", "").strip()
    height_text = size.findtext("height", "").strip()
    try:
        width = float(width_text)
        height = float(height_text)
    except ValueError:
        return None
    if math.isnan(width) or math.isnan(height):
        return None
    if math.isinf(width) or math.isinf(height) or width * height > _max_image_pixels():
        raise DataError(
            f"{path}: <size> declares {width_text} x {height_text} pixels, more than the limit of "
            f"{_max_image_pixels()} pixels per image. Fix: write the image's real width and height."
        )
    if width < 1 or height < 1:
        return None
    return int(width), int(height)


def _parse_difficult(text: str | None, path: Path, index: int) -> bool:
    # A missing or empty <difficult> means 0 (not difficult).
    if text is None or not text.strip():
        return False
    try:
        return float(text) != 0
    except ValueError:
        raise DataError(
            f"{path}: object {index}: <difficult> is {text!r}, expected 0 or 1. Fix: write 0 or 1."
        ) from None


def parse_annotation(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, tuple[int, int] | None, bytes]:
    """Parse one VOC XML annotation file.

    Fields are read by tag name, so their order and extra tags (<occluded>, <pose>) do
    not matter. The file's <filename>, <path> and <folder> are ignored.

    Args:
        path: the XML file.

    Returns:
        names: class name of each object, stripped of surrounding white space.
        voc_boxes: (N, 4) float64 xmin, ymin, xmax, ymax as written (1-based, inclusive).
        difficult: (N,) bool, False where <difficult> is missing.
        size: (width, height) from <size>, or None when missing or 0.
        raw: the file's bytes, for the fingerprint.

    Raises:
        DataError: the file is missing, empty, malformed, declares entities, or has an
            object without a name or a complete numeric <bndbox>.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"annotation file not found: {path}. Fix: add Annotations/{path.name} or remove the id "
            f"{path.stem!r} from the image set."
        ) from None
    if not raw.strip():
        raise DataError(
            f"{path}: the annotation file is empty (0 bytes of XML). Fix: restore the file or remove "
            f"the id {path.stem!r} from the image set."
        )

    text = _decode_xml(raw, path)
    try:
        # defusedxml raises at the first entity declaration, so a "billion laughs" file
        # is rejected before any expansion.
        root = SafeET.fromstring(text, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as error:
        raise DataError(
            f"{path}: the XML declares entities ({error}), which are not allowed in annotations "
            f"because expanding them can exhaust memory. Fix: remove the <!DOCTYPE> / <!ENTITY> part."
        ) from None
    except StdET.ParseError as error:
        raise DataError(
            f"{path}: malformed or truncated XML ({error}). Fix: repair or re-export the annotation."
        ) from None

    names: list[str] = []
    boxes: list[list[float]] = []
    difficult: list[bool] = []
    for index, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{path}: object {index} has no <name>. Fix: add the class name.")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{path}: object {index} ({name!r}) has no <bndbox>. Fix: add the box.")
        coords = [_parse_float(bndbox.findtext(tag), tag, path, index) for tag in ("xmin", "ymin", "xmax", "ymax")]

        names.append(name)
        boxes.append(coords)
        difficult.append(_parse_difficult(obj.findtext("difficult"), path, index))

    voc_boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return names, voc_boxes, np.asarray(difficult, dtype=bool), _parse_size(root, path), raw


def voc_to_continuous(voc_boxes: np.ndarray) -> np.ndarray:
    """Convert (N, 4) VOC 1-based inclusive boxes to 0-based continuous xyxy pixels."""
    boxes = np.array(voc_boxes, dtype=np.float64).reshape(-1, 4)
    boxes[:, :2] -= 1.0
    return boxes


def continuous_to_voc(boxes: np.ndarray) -> np.ndarray:
    """Convert (N, 4) continuous xyxy pixel boxes back to VOC 1-based inclusive numbers."""
    voc_boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    voc_boxes[:, :2] += 1.0
    return voc_boxes


# ---------------------------------------------------------------------------
# Images


def _index_images(year_dir: Path) -> dict[str, Path]:
    """Map each id to its image file in JPEGImages/ with one folder listing (a stat per id is slow)."""
    folder = year_dir / "JPEGImages"
    if not folder.is_dir():
        return {}
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    best: dict[str, tuple[int, Path]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            ext_rank = rank.get(ext.lower())
            if ext_rank is None:
                continue
            if stem not in best or ext_rank < best[stem][0]:
                best[stem] = (ext_rank, Path(entry.path))
    return {stem: path for stem, (_, path) in best.items()}


def _max_image_pixels() -> int:
    # PIL's limit against decompression bombs (about 89 million pixels unless changed).
    return PIL.Image.MAX_IMAGE_PIXELS or 2**62


def _open_image(path: Path) -> PIL.Image.Image:
    """Open an image lazily, rejecting any image of more than PIL.Image.MAX_IMAGE_PIXELS pixels.

    PIL only warns between that limit and twice it, and raises above. A detection image
    that large is a decompression bomb or a mistake, so both cases raise here, from the
    header alone, before the pixels are decoded.

    Raises:
        DataError: the file is not a readable image, or it is over the pixel limit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        try:
            return PIL.Image.open(path)
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
            raise DataError(
                f"{path}: rejected as a possible decompression bomb: {error} Fix: replace the file with "
                f"an image of at most {_max_image_pixels()} pixels."
            ) from None
        except OSError as error:
            raise DataError(f"{path}: the image cannot be read ({error}). Fix: replace the file.") from None


def _image_size(path: Path) -> tuple[int, int]:
    """Read (width, height) from the image header without decoding the pixels.

    NOTE: a file that is cut off after its header passes here and fails later, in read_image.
    """
    with _open_image(path) as image:
        return image.size


def read_image(path: str | Path) -> PIL.Image.Image:
    """Load an image file as 8-bit RGB.

    Grayscale, palette, CMYK and 16-bit images are converted. An alpha channel is dropped.
    EXIF orientation is not applied, like the VOC tools, because the boxes refer to the
    stored pixel grid.
    """
    path = Path(path)
    try:
        with _open_image(path) as image:
            image.load()
            if image.mode == "RGB":
                return image.copy()
            if image.mode.startswith("I;16") or image.mode in ("I", "F"):
                # convert("RGB") would clip 16-bit values at 255, so scale them to 8 bits first.
                array = np.asarray(image, dtype=np.float64)
                peak = 65535.0 if image.mode != "F" else max(float(array.max()), 1e-12)
                gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return PIL.Image.fromarray(gray).convert("RGB")
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            return image.convert("RGB")
    except (OSError, PIL.Image.DecompressionBombError) as error:
        raise DataError(f"{path}: the image cannot be read ({error}). Fix: replace the file.") from None


# ---------------------------------------------------------------------------
# Loading


def _parse_image_sets(root: Path, image_sets: Sequence[str], progress: tqdm | None) -> list[_Annotation]:
    if isinstance(image_sets, str):
        image_sets = [image_sets]
    if not image_sets:
        raise DataError(f"{root}: no image set given. Fix: name one, e.g. 'trainval' or '2007/test'.")

    annotations: list[_Annotation] = []
    seen: set[tuple[Path, str]] = set()
    image_index: dict[Path, dict[str, Path]] = {}
    for name in image_sets:
        year_dir, split = resolve_image_set(root, name)
        if year_dir not in image_index:
            image_index[year_dir] = _index_images(year_dir)
        images = image_index[year_dir]

        for image_id in read_image_set(year_dir, split):
            if (year_dir, image_id) in seen:
                continue
            seen.add((year_dir, image_id))

            image_path = images.get(image_id)
            if image_path is None:
                raise DataError(
                    f"image for id {image_id!r} (image set {name!r}) not found: expected "
                    f"{year_dir / 'JPEGImages' / image_id}.jpg (or {', '.join(IMAGE_EXTENSIONS[1:])}). "
                    f"Fix: add the image or remove the id from the image set."
                )
            annotation_path = year_dir / "Annotations" / f"{image_id}.xml"
            names, voc_boxes, difficult, xml_size, raw = parse_annotation(annotation_path)
            annotations.append(
                _Annotation(
                    image_id=image_id,
                    year_dir=year_dir,
                    image_path=image_path,
                    annotation_path=annotation_path,
                    digest=hashlib.sha256(raw).hexdigest(),
                    names=names,
                    voc_boxes=voc_boxes,
                    difficult=difficult,
                    xml_size=xml_size,
                    image_size=_image_size(image_path),
                )
            )
            if progress is not None:
                progress.update(1)
    return annotations


def _resolve_classes(
    annotations: Iterable[_Annotation], classes: Sequence[str] | str | None
) -> tuple[str, ...]:
    annotations = list(annotations)
    if classes is not None:
        if isinstance(classes, str):
            classes = [c for c in classes.split(",")]
        class_list = tuple(c.strip() for c in classes)
        if not class_list or any(not c for c in class_list):
            raise DataError(f"invalid class list {list(classes)!r}: empty names. Fix: give non-empty class names.")
        duplicates = sorted({c for c in class_list if class_list.count(c) > 1})
        if duplicates:
            raise DataError(f"class list {list(class_list)!r} repeats {duplicates}. Fix: give each class once.")
        known = set(class_list)
        for annotation in annotations:
            for name in annotation.names:
                if name not in known:
                    raise DataError(
                        f"{annotation.annotation_path}: class name {name!r} is not in the given class list "
                        f"{list(class_list)}. Fix: add {name!r} to the class list or correct the annotation."
                    )
        return class_list

    found = {name for annotation in annotations for name in annotation.names}
    voc_layout = bool(annotations) and all(_YEAR_FOLDER.fullmatch(a.year_dir.name) for a in annotations)
    if voc_layout and found <= set(VOC_CLASSES):
        return VOC_CLASSES
    if not found:
        raise DataError(
            f"{annotations[0].year_dir if annotations else 'data'}: the annotations contain no objects, so "
            f"no class list can be discovered. Fix: pass the class list explicitly."
        )
    return tuple(sorted(found))


def _build_record(annotation: _Annotation, class_index: dict[str, int], stats: _LoadStats) -> ImageRecord:
    width, height = annotation.image_size
    if annotation.xml_size is None:
        stats.size_missing_files.append(annotation.annotation_path)
    elif annotation.xml_size != (width, height):
        stats.size_mismatch_files.append(annotation.annotation_path)

    boxes = voc_to_continuous(annotation.voc_boxes)
    clipped = boxes.copy()
    np.clip(clipped[:, 0::2], 0.0, width, out=clipped[:, 0::2])
    np.clip(clipped[:, 1::2], 0.0, height, out=clipped[:, 1::2])
    n_clipped = int(np.any(clipped != boxes, axis=1).sum())
    if n_clipped:
        stats.clipped_boxes += n_clipped
        stats.clipped_files.append(annotation.annotation_path)

    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    n_dropped = int((~keep).sum())
    if n_dropped:
        stats.dropped_boxes += n_dropped
        stats.dropped_files.append(annotation.annotation_path)

    labels = np.array([class_index[name] for name in annotation.names], dtype=np.int64)
    return ImageRecord(
        image_id=annotation.image_id,
        image_path=annotation.image_path,
        annotation_path=annotation.annotation_path,
        width=int(width),
        height=int(height),
        boxes=clipped[keep].astype(np.float32),
        labels=labels[keep],
        difficult=annotation.difficult[keep],
    )


def _log_stats(stats: _LoadStats) -> None:
    if stats.clipped_boxes:
        logger.warning(
            "clipped %d boxes in %d annotation files to the image bounds (first: %s)",
            stats.clipped_boxes, len(stats.clipped_files), stats.clipped_files[0],
        )  # fmt: skip
    if stats.dropped_boxes:
        logger.warning(
            "dropped %d zero-area boxes in %d annotation files (first: %s)",
            stats.dropped_boxes, len(stats.dropped_files), stats.dropped_files[0],
        )  # fmt: skip
    if stats.size_mismatch_files:
        logger.warning(
            "%d annotation files give a <size> that differs from their image; the image's size was used "
            "(first: %s)",
            len(stats.size_mismatch_files), stats.size_mismatch_files[0],
        )  # fmt: skip
    if stats.size_missing_files:
        logger.info(
            "%d annotation files have no usable <size>; the image's size was used (first: %s)",
            len(stats.size_missing_files), stats.size_missing_files[0],
        )  # fmt: skip


def _split_fingerprint(annotations: Sequence[_Annotation], classes: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    digest.update(("\n".join(classes) + "\0").encode("utf-8"))
    for annotation in annotations:
        digest.update(f"{annotation.year_dir.name}/{annotation.image_id}\0{annotation.digest}\n".encode("utf-8"))
    return digest.hexdigest()


def load_voc_sets(
    root: str | Path,
    groups: Sequence[Sequence[str] | str],
    classes: Sequence[str] | str | None = None,
) -> list[VOCSplit]:
    """Load several groups of image sets with one shared class list.

    Args:
        root: a VOCdevkit folder, one VOC year folder, or the folder containing VOCdevkit.
        groups: one entry per returned split, each a name or a list of image-set names.
        classes: the class list, or None to use the 20 VOC classes for VOC data (a
            VOC<year> folder whose names are all VOC classes), else the sorted names found.

    Returns:
        One VOCSplit per group.

    Raises:
        DataError: on the first problem found in any group.
    """
    root = Path(root)
    groups = [[g] if isinstance(g, str) else list(g) for g in groups]
    progress = None
    total = 0
    for group in groups:
        for name in group:
            year_dir, split = resolve_image_set(root, name)
            total += len(read_image_set(year_dir, split))
    if total >= _PROGRESS_MIN_FILES:
        progress = tqdm(total=total, desc="reading annotations", unit="file", leave=False)

    try:
        parsed = [_parse_image_sets(root, group, progress) for group in groups]
    finally:
        if progress is not None:
            progress.close()
    class_list = _resolve_classes((a for group in parsed for a in group), classes)
    class_index = {name: i for i, name in enumerate(class_list)}

    splits = []
    for group, annotations in zip(groups, parsed):
        stats = _LoadStats()
        records = tuple(_build_record(a, class_index, stats) for a in annotations)
        _log_stats(stats)
        splits.append(
            VOCSplit(
                root=root,
                image_sets=tuple(group),
                classes=class_list,
                records=records,
                fingerprint=_split_fingerprint(annotations, class_list),
                n_clipped_boxes=stats.clipped_boxes,
                n_dropped_boxes=stats.dropped_boxes,
            )
        )
    return splits


def load_voc(
    root: str | Path, image_sets: Sequence[str] | str, classes: Sequence[str] | str | None = None
) -> VOCSplit:
    """Load the records of one or more image sets, e.g. ``["2007/trainval", "2012/trainval"]``.

    Args:
        root: a VOCdevkit folder, one VOC year folder, or the folder containing VOCdevkit.
        image_sets: image-set names, "YEAR/SPLIT" or "SPLIT" (see ``resolve_image_set``).
        classes: the class list; None picks the 20 VOC classes for VOC data, else the
            sorted class names found in these annotations.

    Raises:
        DataError: missing image or annotation, malformed XML, entities in XML, missing or
            empty image-set file, an id that is not a plain file name, or a class name
            outside the given list.
    """
    return load_voc_sets(root, [image_sets], classes)[0]


def data_fingerprint(train: VOCSplit, test: VOCSplit) -> str:
    """Return the data-set fingerprint: 16 hex characters of sha256 over both splits' fingerprints."""
    digest = hashlib.sha256(f"train:{train.fingerprint}\ntest:{test.fingerprint}\n".encode("ascii"))
    return digest.hexdigest()[:16]


def load_voc_splits(
    root: str | Path,
    train_sets: Sequence[str] | str,
    test_sets: Sequence[str] | str,
    classes: Sequence[str] | str | None = None,
) -> tuple[VOCSplit, VOCSplit, str]:
    """Load a training and a test split with one class list.

    Args:
        root: a VOCdevkit folder, one VOC year folder, or the folder containing VOCdevkit.
        train_sets: image-set names of the training split, e.g. ["2007/trainval", "2012/trainval"].
        test_sets: image-set names of the test split, e.g. "2007/test".
        classes: the class list; None picks the 20 VOC classes for VOC data, else the
            sorted class names found in both splits.

    Returns:
        (train split, test split, fingerprint). The fingerprint is 16 hex characters of
        sha256 over the ids, annotation file bytes and class list of both splits.
    """
    train, test = load_voc_sets(root, [train_sets, test_sets], classes)
    return train, test, data_fingerprint(train, test)


# ---------------------------------------------------------------------------
# Dataset


def image_to_tensor(image: PIL.Image.Image) -> tv_tensors.Image:
    """Convert an RGB PIL image to a uint8 (3, H, W) tv_tensors.Image."""
    return F.to_image(image)


class DetectionDataset(torch.utils.data.Dataset):
    """Images and box targets of VOC records, for a DataLoader.

    Each item is ``(image, target)``. ``image`` is a float32 tv_tensors.Image in [0, 1] of
    shape (3, H, W). ``target`` is a dict with "boxes" (tv_tensors.BoundingBoxes XYXY float32
    (N, 4), pixels), "labels" (N,) int64, "difficult" (N,) bool, "image_id" str, "orig_size"
    (height, width) of the file and "index" (position in ``records``).

    The transform receives the uint8 image and the target dict, as torchvision.transforms.v2
    pipelines expect. Its output is converted to float32 in [0, 1] if it is not float already.
    """

    def __init__(self, records: Sequence[ImageRecord], transform=None):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = image_to_tensor(read_image(record.image_path))
        height, width = image.shape[-2:]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
                format=tv_tensors.BoundingBoxFormat.XYXY,
                canvas_size=(height, width),
            ),
            "labels": torch.as_tensor(record.labels, dtype=torch.int64).reshape(-1),
            "difficult": torch.as_tensor(record.difficult, dtype=torch.bool).reshape(-1),
            "image_id": record.image_id,
            "orig_size": (int(height), int(width)),
            "index": int(index),
        }

        if self.transform is not None:
            image, target = self.transform(image, target)
        if not image.is_floating_point():
            image = F.to_dtype(image, torch.float32, scale=True)
        return image, target
