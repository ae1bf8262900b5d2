"""Inputs seen in real VOC-layout data sets, each with the value the reader must produce."""

import codecs
import logging
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision.ops import box_iou

from yolonb.data import DataError, load_voc


def make_year_folder(root: Path, annotations: dict, image_sizes=None, split_text=None, name="VOC2007") -> Path:
    """Write a VOC year folder: one JPEG per id (default 200x100), the given XML, a trainval list.

    Args:
        annotations: id -> XML as str (written as UTF-8) or bytes (written as is).
        image_sizes: id -> (width, height) of the JPEG to write.
        split_text: bytes of ImageSets/Main/trainval.txt; default lists the ids.
    """
    year = root / name
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    image_sizes = image_sizes or {}
    for image_id, xml in annotations.items():
        data = xml.encode("utf-8") if isinstance(xml, str) else xml
        (year / "Annotations" / f"{image_id}.xml").write_bytes(data)
        PIL.Image.new("RGB", image_sizes.get(image_id, (200, 100)), (90, 40, 10)).save(year / "JPEGImages" / f"{image_id}.jpg")
    if split_text is None:
        split_text = "".join(f"{i}\n" for i in annotations).encode("ascii")
    (year / "ImageSets" / "Main" / "trainval.txt").write_bytes(split_text)
    return year


def box_xml(name, xmin, ymin, xmax, ymax, difficult="0"):
    difficult_tag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>{difficult_tag}"
        f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def annotation_xml(objects="", size="<size><width>200</width><height>100</height><depth>3</depth></size>"):
    return f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename>{size}{objects}</annotation>"


def load_one(tmp_path, xml, image_size=(200, 100), classes=None):
    year = make_year_folder(tmp_path, {"000005": xml}, {"000005": image_size})
    return load_voc(year, "trainval", classes).records[0]


def test_decimal_coordinates_read_as_floats(tmp_path):
    xml = annotation_xml(box_xml("dog", "12.5", "45.70000076293945", "60.25", "80"))
    record = load_one(tmp_path, xml)
    np.testing.assert_allclose(record.boxes[0], [11.5, 44.70000076293945, 60.25, 80.0], rtol=0, atol=1e-5)


def test_missing_difficult_pose_truncated(tmp_path):
    obj = "<object><name>dog</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>"
    record = load_one(tmp_path, annotation_xml(obj))
    assert record.difficult.tolist() == [False]
    np.testing.assert_array_equal(record.boxes, [[10, 20, 30, 40]])


def test_difficult_kept(tmp_path):
    xml = annotation_xml(box_xml("dog", 11, 21, 30, 40, difficult="1") + box_xml("cat", 1, 1, 5, 5, difficult="0"))
    record = load_one(tmp_path, xml)
    assert record.difficult.tolist() == [True, False]


def test_box_fields_in_other_order(tmp_path):
    obj = (
        "<object><occluded>1</occluded><bndbox><xmin>11</xmin><xmax>30</xmax><ymin>21</ymin><ymax>40</ymax>"
        "</bndbox><difficult>0</difficult><name>dog</name><extra><x>1</x></extra></object>"
    )
    record = load_one(tmp_path, annotation_xml(obj))
    np.testing.assert_array_equal(record.boxes, [[10, 20, 30, 40]])


def test_box_past_image_clipped_with_count(tmp_path, caplog):
    size = "<size><width>162</width><height>130</height><depth>3</depth></size>"
    xml = annotation_xml(box_xml("dog", 23, 29, 163, 121), size=size)
    with caplog.at_level(logging.WARNING, logger="yolonb.data.voc"):
        record = load_one(tmp_path, xml, image_size=(162, 130))
    np.testing.assert_array_equal(record.boxes, [[22, 28, 162, 121]])
    assert "clipped 1 boxes in 1 annotation files" in caplog.text


def test_box_at_zero_clipped(tmp_path, caplog):
    xml = annotation_xml(box_xml("dog", 0, 0, 10, 12) + box_xml("dog", 0, 5, 20, 30))
    with caplog.at_level(logging.WARNING, logger="yolonb.data.voc"):
        split = load_voc(make_year_folder(tmp_path, {"000005": xml}), "trainval")
    np.testing.assert_array_equal(split.records[0].boxes, [[0, 0, 10, 12], [0, 4, 20, 30]])
    assert split.n_clipped_boxes == 2
    assert "clipped 2 boxes" in caplog.text


def test_zero_width_size_taken_from_image(tmp_path):
    size = "<size><width>0</width><height>0</height><depth>3</depth></size>"
    record = load_one(tmp_path, annotation_xml(box_xml("dog", 11, 21, 300, 40), size=size), image_size=(250, 120))
    assert (record.width, record.height) == (250, 120)
    np.testing.assert_array_equal(record.boxes, [[10, 20, 250, 40]])


def test_missing_size_taken_from_image(tmp_path):
    record = load_one(tmp_path, annotation_xml(box_xml("dog", 11, 21, 30, 40), size=""), image_size=(64, 48))
    assert (record.width, record.height) == (64, 48)


def test_size_mismatch_uses_image(tmp_path, caplog):
    size = "<size><width>500</width><height>400</height><depth>3</depth></size>"
    with caplog.at_level(logging.WARNING, logger="yolonb.data.voc"):
        record = load_one(tmp_path, annotation_xml(box_xml("dog", 11, 21, 30, 40), size=size), image_size=(64, 48))
    assert (record.width, record.height) == (64, 48)
    assert "1 annotation files give a <size> that differs" in caplog.text


def test_gb2312_declared_xml(tmp_path):
    xml = '<?xml version="1.0" encoding="gb2312"?>' + annotation_xml(box_xml("红灯", 11, 21, 30, 40))
    split = load_voc(make_year_folder(tmp_path, {"000005": xml.encode("gb2312")}), "trainval")
    assert split.classes == ("红灯",)
    np.testing.assert_array_equal(split.records[0].boxes, [[10, 20, 30, 40]])


def test_utf8_chinese_class_names(tmp_path):
    with_declaration = '<?xml version="1.0" encoding="UTF-8"?>' + annotation_xml(box_xml("行人", 1, 1, 9, 9))
    with_bom = codecs.BOM_UTF8 + annotation_xml(box_xml("红灯", 1, 1, 9, 9)).encode("utf-8")
    split = load_voc(make_year_folder(tmp_path, {"000001": with_declaration, "000002": with_bom}), "trainval")
    assert split.classes == tuple(sorted(["行人", "红灯"]))
    assert [split.classes[r.labels[0]] for r in split.records] == ["行人", "红灯"]


@pytest.mark.parametrize(
    "encoded",
    [
        codecs.BOM_UTF8 + b"000005\r\n000007\r\n",
        "000005\n000007\n".encode("utf-16"),
        codecs.BOM_UTF16_BE + "000005\n000007\n".encode("utf-16-be"),
        codecs.BOM_UTF16_LE + "000005\r\n000007".encode("utf-16-le"),
    ],
    ids=["utf8-bom", "utf16-native", "utf16-be", "utf16-le"],
)
def test_split_file_with_bom(tmp_path, encoded):
    xml = annotation_xml(box_xml("dog", 1, 1, 9, 9))
    year = make_year_folder(tmp_path, {"000005": xml, "000007": xml}, split_text=encoded)
    assert [r.image_id for r in load_voc(year, "trainval").records] == ["000005", "000007"]


def test_no_object_is_negative_image(tmp_path):
    record = load_one(tmp_path, annotation_xml(""))
    assert record.boxes.shape == (0, 4)
    assert record.boxes.dtype == np.float32
    assert record.labels.shape == (0,)
    assert record.difficult.shape == (0,)


def test_zero_byte_xml_names_file(tmp_path):
    year = make_year_folder(tmp_path, {"000005": b"", "000006": annotation_xml(box_xml("dog", 1, 1, 9, 9))})
    with pytest.raises(DataError, match=r"000005\.xml: the annotation file is empty"):
        load_voc(year, "trainval")


def test_iou_pair_after_conversion(tmp_path):
    xml = annotation_xml(
        box_xml("dog", 278, 299, 302, 326) + box_xml("dog", 286.58, 301.95, 300.10, 326.75),
        size="<size><width>400</width><height>400</height><depth>3</depth></size>",
    )
    record = load_one(tmp_path, xml, image_size=(400, 400))
    boxes = torch.as_tensor(record.boxes, dtype=torch.float64)
    assert box_iou(boxes[:1], boxes[1:]).item() == pytest.approx(0.512, abs=5e-4)

    # The same numbers without the conversion give the continuous-coordinate value.
    raw = torch.tensor([[278, 299, 302, 326], [286.58, 301.95, 300.10, 326.75]], dtype=torch.float64)
    assert box_iou(raw[:1], raw[1:]).item() == pytest.approx(0.494, abs=5e-4)


def test_zero_area_boxes_dropped_with_count(tmp_path, caplog):
    xml = annotation_xml(
        box_xml("dog", 11, 21, 10, 40)  # xmax < xmin: width 0 after conversion
        + box_xml("cat", 11, 21, 30, 40)
        + box_xml("dog", 250, 21, 260, 40, difficult="1")  # entirely right of the 200-pixel image
    )
    with caplog.at_level(logging.WARNING, logger="yolonb.data.voc"):
        split = load_voc(make_year_folder(tmp_path, {"000005": xml}), "trainval")
    record = split.records[0]
    np.testing.assert_array_equal(record.boxes, [[10, 20, 30, 40]])
    assert [split.classes[i] for i in record.labels] == ["cat"]
    assert record.difficult.tolist() == [False]
    assert split.n_dropped_boxes == 2
    assert "dropped 2 zero-area boxes in 1 annotation files" in caplog.text


def test_filename_and_windows_path_ignored(tmp_path):
    xml = (
        "<annotation><folder>elsewhere</folder><filename>IMG_9999.JPG</filename>"
        "<path>C:\\Users\\me\\Pictures\\IMG_9999.JPG</path>"
        + box_xml("dog", 1, 1, 9, 9)
        + "</annotation>"
    )
    year = make_year_folder(tmp_path, {"000005": xml})
    assert load_voc(year, "trainval").records[0].image_path == year / "JPEGImages" / "000005.jpg"


def test_desktop_ini_in_annotations_ignored(tmp_path):
    year = make_year_folder(tmp_path, {"000005": annotation_xml(box_xml("redleft", 1, 1, 9, 9))})
    (year / "Annotations" / "desktop.ini").write_bytes(b"[.ShellClassInfo]\r\nIconResource=x\r\n")
    (year / "JPEGImages" / "Thumbs.db").write_bytes(b"\x00\x01")
    assert load_voc(year, "trainval").classes == ("redleft",)


@pytest.mark.parametrize("extension", [".png", ".jpeg", ".JPG", ".bmp"])
def test_image_extension_found_by_id(tmp_path, extension):
    year = make_year_folder(tmp_path, {"000005": annotation_xml(box_xml("dog", 1, 1, 9, 9))})
    (year / "JPEGImages" / "000005.jpg").unlink()
    PIL.Image.new("RGB", (30, 20)).save(year / "JPEGImages" / f"000005{extension}", format=None if extension != ".JPG" else "JPEG")
    record = load_voc(year, "trainval").records[0]
    assert record.image_path.name == f"000005{extension}"
    assert (record.width, record.height) == (30, 20)


def test_billion_laughs_rejected_at_once(tmp_path):
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    )
    xml = f'<?xml version="1.0"?><!DOCTYPE annotation [{entities}]><annotation><object><name>&lol9;</name></object></annotation>'
    year = make_year_folder(tmp_path, {"000005": xml})

    start = time.perf_counter()
    with pytest.raises(DataError, match=r"000005\.xml: the XML declares entities"):
        load_voc(year, "trainval")
    assert time.perf_counter() - start < 1.0
