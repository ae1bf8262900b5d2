"""Tests of the embedded synthetic data set: determinism, VOC layout, statistics, cache, preview."""

from pathlib import Path

import defusedxml.ElementTree as DefusedET
import numpy as np
import pytest
from PIL import Image

from yolonb.data import synthetic
from yolonb.data.synthetic import (
    DEFAULT_CLASS_WEIGHTS,
    SYNTHETIC_CLASSES,
    SyntheticConfig,
    SyntheticObject,
    _annotation_xml,
    _pixel_box,
    _rasterize,
    _rectangle,
    ensure_synthetic,
    generate,
)
from yolonb.data.voc import load_voc

# Nine images keep each generation under a second.
SMALL = {"n_trainval": 6, "n_test": 3}


def _read_annotation(path: Path) -> dict:
    """Parse one annotation file with defusedxml, independently of the project's VOC reader."""
    root = DefusedET.parse(path).getroot()
    objects = []
    for node in root.findall("object"):
        box = node.find("bndbox")
        objects.append(
            {
                "name": node.findtext("name"),
                "difficult": node.findtext("difficult") == "1",
                "truncated": node.findtext("truncated") == "1",
                "occluded": node.findtext("occluded") == "1",
                # 1-based inclusive VOC indices to continuous 0-based pixels.
                "box": (
                    float(box.findtext("xmin")) - 1,
                    float(box.findtext("ymin")) - 1,
                    float(box.findtext("xmax")),
                    float(box.findtext("ymax")),
                ),
            }
        )
    return {
        "width": int(root.findtext("size/width")),
        "height": int(root.findtext("size/height")),
        "objects": objects,
    }


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def medium_set(tmp_path_factory) -> Path:
    """150 images (about 650 objects): enough for frequency and size statistics."""
    return generate(tmp_path_factory.mktemp("medium") / "data", n_trainval=120, n_test=30, seed=3)


def _objects(root: Path, image_set: str) -> list[dict]:
    ids = (root / "ImageSets" / "Main" / f"{image_set}.txt").read_text().split()
    return [obj for image_id in ids for obj in _read_annotation(root / "Annotations" / f"{image_id}.xml")["objects"]]


def test_generate_same_seed_same_bytes(tmp_path):
    first = _all_files(generate(tmp_path / "a", seed=7, **SMALL))
    second = _all_files(generate(tmp_path / "b", seed=7, **SMALL))

    assert len(first) == 6 + 3 + 6 + 3 + 4 + 1  # jpg, xml, split files, manifest
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def test_generate_other_seed_other_images(tmp_path):
    first = generate(tmp_path / "a", seed=7, **SMALL)
    second = generate(tmp_path / "b", seed=8, **SMALL)

    jpeg = "JPEGImages/000000.jpg"
    assert (first / jpeg).read_bytes() != (second / jpeg).read_bytes()


def test_generate_writes_voc_layout(tmp_path):
    root = generate(tmp_path / "data", n_trainval=10, n_test=4, seed=1)
    main = root / "ImageSets" / "Main"

    trainval = (main / "trainval.txt").read_text().split()
    train = (main / "train.txt").read_text().split()
    val = (main / "val.txt").read_text().split()
    test = (main / "test.txt").read_text().split()
    assert trainval == [f"{i:06d}" for i in range(10)]
    assert test == [f"{i:06d}" for i in range(10, 14)]
    assert len(val) == 2  # val_fraction 0.2 of 10
    assert sorted(train + val) == trainval
    assert not set(train) & set(val)

    for image_id in trainval + test:
        annotation = _read_annotation(root / "Annotations" / f"{image_id}.xml")
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as image:
            assert image.mode == "RGB"
            assert image.size == (annotation["width"], annotation["height"])
        assert 128 <= annotation["width"] <= 192
        assert 128 <= annotation["height"] <= 192
        assert 1 <= len(annotation["objects"]) <= 6


def test_generate_rejects_existing_data_set(tmp_path):
    root = generate(tmp_path / "data", **SMALL)

    with pytest.raises(FileExistsError, match="already contains a data set"):
        generate(root, **SMALL)


def test_annotation_xml_one_based_coordinates():
    obj = SyntheticObject("star", (0, 5, 10, 20), difficult=True, truncated=True, occluded=False, visible_fraction=0.4)

    root = DefusedET.fromstring(_annotation_xml("000042", 200, 180, [obj]))

    assert root.findtext("filename") == "000042.jpg"
    assert root.findtext("size/width") == "200"
    assert root.findtext("size/height") == "180"
    node = root.find("object")
    assert node.findtext("name") == "star"
    assert node.findtext("difficult") == "1"
    assert node.findtext("truncated") == "1"
    assert node.findtext("occluded") == "0"
    # Continuous [0, 10] covers the 1-based pixels 1..10.
    assert [node.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")] == ["1", "6", "10", "20"]


@pytest.mark.parametrize(
    ("center", "expected"),
    [
        ((10.0, 10.0), (5, 5, 15, 15)),  # edges on pixel borders: exact
        ((10.3, 10.0), (5, 5, 16, 15)),  # [5.3, 15.3] reaches into column 15
        ((2.0, 10.0), (0, 5, 7, 15)),  # [-3, 7] is clipped at the left border
    ],
)
def test_pixel_box_of_square(center, expected):
    raster = _rasterize([(_rectangle(1.0, 1.0), 255)], center, (5.0, 5.0), 0.0)

    assert _pixel_box(raster, 30, 30) == expected


def test_square_raster_area():
    raster = _rasterize([(_rectangle(1.0, 1.0), 255)], (10.0, 10.0), (5.0, 5.0), 0.0)

    assert raster.full_area == 100


def test_class_frequencies_long_tailed(medium_set):
    objects = _objects(medium_set, "trainval") + _objects(medium_set, "test")
    counts = {name: sum(obj["name"] == name for obj in objects) for name in SYNTHETIC_CLASSES}

    assert set(counts) == set(SYNTHETIC_CLASSES)
    assert min(counts.values()) > 0
    assert max(counts, key=counts.get) == "disc"
    ranked = sorted(counts, key=counts.get)
    assert "arrow" in ranked[:2]
    # The weights 1.0 and 0.25 give a ratio of 4, and this sample of about 650 objects keeps it within a factor 2.
    assert 2 <= counts["disc"] / counts["arrow"] <= 8
    # Neighbouring weights (0.6 and 0.5) are too close to keep their order in a sample this
    # size, so each class's share is checked against its weight's share instead.
    total, weight_total = sum(counts.values()), sum(DEFAULT_CLASS_WEIGHTS.values())
    for name, weight in DEFAULT_CLASS_WEIGHTS.items():
        assert counts[name] / total == pytest.approx(weight / weight_total, rel=0.35), name


def test_manifest_counts_match_annotations(medium_set):
    import json

    manifest = json.loads((medium_set / "synthetic.json").read_text())
    for split in ("trainval", "test"):
        objects = _objects(medium_set, split)
        for name in SYNTHETIC_CLASSES:
            assert manifest["objects"][split][name] == sum(obj["name"] == name for obj in objects), (split, name)
        assert manifest["difficult_objects"][split] == sum(obj["difficult"] for obj in objects)
    assert manifest["classes"] == list(SYNTHETIC_CLASSES)
    assert manifest["fingerprint"] == SyntheticConfig(n_trainval=120, n_test=30, seed=3).fingerprint()


def test_object_sizes_span_strides(medium_set):
    objects = _objects(medium_set, "trainval") + _objects(medium_set, "test")
    sides = np.array([max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) for o in objects if not o["truncated"]])

    assert sides.min() <= 12
    assert sides.max() >= 70
    # Shares of the sizes that the stride 8, 16 and 32 levels take (in image pixels).
    assert (sides < 20).mean() >= 0.15
    assert ((sides >= 20) & (sides < 45)).mean() >= 0.15
    assert (sides >= 45).mean() >= 0.15


def test_boxes_inside_images_with_hard_cases(medium_set):
    ids = (medium_set / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    annotations = [_read_annotation(medium_set / "Annotations" / f"{i}.xml") for i in ids]
    objects = [obj for a in annotations for obj in a["objects"]]

    for annotation in annotations:
        for obj in annotation["objects"]:
            x_min, y_min, x_max, y_max = obj["box"]
            assert 0 <= x_min < x_max <= annotation["width"]
            assert 0 <= y_min < y_max <= annotation["height"]
            if obj["truncated"]:
                assert x_min == 0 or y_min == 0 or x_max == annotation["width"] or y_max == annotation["height"]

    difficult = np.mean([o["difficult"] for o in objects])
    assert 0.05 <= difficult <= 0.35
    assert np.mean([o["truncated"] for o in objects]) >= 0.03
    assert np.mean([o["occluded"] for o in objects]) >= 0.05
    # A whole object with a box side under 9 pixels spans under 12 pixels (difficult_size),
    # because at most one partly covered pixel on each side falls outside its box.
    tiny = [o for o in objects if not o["truncated"] and max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) < 9]
    assert all(o["difficult"] for o in tiny)


def test_voc_reader_reads_synthetic(tmp_path):
    root = generate(tmp_path / "data", **SMALL)

    split = load_voc(root, ["trainval"])

    assert split.classes == tuple(sorted(split.classes))
    assert set(split.classes) <= set(SYNTHETIC_CLASSES)
    assert [r.image_id for r in split.records] == [f"{i:06d}" for i in range(6)]
    for record in split.records:
        expected = _read_annotation(record.annotation_path)
        assert (record.width, record.height) == (expected["width"], expected["height"])
        np.testing.assert_array_equal(record.boxes, np.array([o["box"] for o in expected["objects"]], dtype=np.float32))
        assert [split.classes[i] for i in record.labels] == [o["name"] for o in expected["objects"]]
        assert record.difficult.tolist() == [o["difficult"] for o in expected["objects"]]


def test_ensure_synthetic_reuses_cache(tmp_path, monkeypatch):
    first = ensure_synthetic(tmp_path, seed=2, **SMALL)

    def fail(*args, **kwargs):
        raise AssertionError("generate was called for a cached data set")

    monkeypatch.setattr(synthetic, "generate", fail)
    second = ensure_synthetic(tmp_path, seed=2, **SMALL)

    assert second == first
    assert first.parent == tmp_path
    assert first.name == f"synthetic-{SyntheticConfig(seed=2, **SMALL).fingerprint()}"
    assert (first / "ImageSets" / "Main" / "test.txt").read_text().split() == ["000006", "000007", "000008"]
    # Only the finished folder remains: no temporary folder is left behind.
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_ensure_synthetic_folder_per_parameters(tmp_path):
    base = ensure_synthetic(tmp_path, seed=2, **SMALL)
    other_seed = ensure_synthetic(tmp_path, seed=3, **SMALL)
    other_size = ensure_synthetic(tmp_path, seed=2, n_trainval=7, n_test=3)

    assert len({base, other_seed, other_size}) == 3


def test_ensure_synthetic_ignores_unfinished_folder(tmp_path, monkeypatch):
    def killed(out_dir, **kwargs):
        (Path(out_dir) / "Annotations").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    root = ensure_synthetic(tmp_path, **SMALL)
    assert len(list((root / "JPEGImages").iterdir())) == 9


def test_ensure_synthetic_default_cache_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLONB_CACHE", str(tmp_path / "cache"))

    root = ensure_synthetic(**SMALL)

    assert root.parent == tmp_path / "cache"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_trainval": 1}, "n_trainval=1"),
        ({"object_size": (50, 10)}, "object_size"),
        ({"min_visible": 0.6, "difficult_visible": 0.5}, "min_visible=0.6"),
        ({"class_weights": {"hexagon": 1.0}}, "hexagon"),
        ({"class_weights": {"disc": 0.0}}, "every weight must be > 0"),
    ],
)
def test_config_rejects_invalid_values(tmp_path, params, message):
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "data", **{**SMALL, **params})


def test_config_rejects_unknown_parameter(tmp_path):
    with pytest.raises(TypeError, match="n_images"):
        ensure_synthetic(tmp_path, n_images=10)


def test_class_weights_restrict_classes(tmp_path):
    root = generate(tmp_path / "data", n_trainval=8, n_test=2, class_weights={"ring": 1.0, "star": 1.0})

    names = {o["name"] for o in _objects(root, "trainval") + _objects(root, "test")}
    assert names == {"ring", "star"}


def test_preview_command_writes_png(tmp_path):
    out_png = tmp_path / "preview.png"

    status = synthetic.main(
        ["--preview", str(out_png), "--out", str(tmp_path / "cache"), "--seed", "4",
         "--n-trainval", "5", "--n-test", "2", "--count", "5"]
    )

    assert status == 0
    with Image.open(out_png) as image:
        assert image.format == "PNG"
        # Two rows of four 3.2-inch panels at 110 dpi.
        assert image.size == (round(4 * 3.2 * 110), round(2 * 3.2 * 110))
