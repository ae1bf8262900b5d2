"""Hostile or broken data: ids that leave the data folder, decompression bombs, absurd sizes and numbers.

Property-based tests (hypothesis) feed the XML reader random and mutated annotations,
and the evaluator random detections.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yolonb.data import DataError, load_voc, load_voc_splits
from yolonb.data.voc import parse_annotation, read_image
from yolonb.eval import evaluate_detections

from test_voc_inputs import annotation_xml, box_xml, load_one, make_year_folder

# A fixed, derandomised profile: the same examples on every run, so CI is repeatable.
settings.register_profile("hostile", max_examples=150, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROFILE = settings.get_profile("hostile")


@pytest.mark.parametrize("bad_id", ["/etc/passwd", "../../etc/passwd", "..\\..\\boot.ini", "C:\\Windows\\x"])
def test_test_split_id_outside_folder_rejected(tmp_path, bad_id):
    xml = annotation_xml(box_xml("dog", 10, 10, 50, 50))
    year = make_year_folder(tmp_path, {"000005": xml})
    (year / "ImageSets" / "Main" / "test.txt").write_text(f"000005\n{bad_id}\n")
    with pytest.raises(DataError, match=r"test\.txt: invalid image id .* must be a plain file name"):
        load_voc_splits(year, ["trainval"], ["test"])


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999"])
def test_non_finite_coordinate_rejected(tmp_path, text):
    xml = annotation_xml(box_xml("dog", "10", text, "50", "60"))
    with pytest.raises(DataError, match=rf"000005\.xml: object 0: <ymin> is '{text}', expected a number"):
        load_one(tmp_path, xml)


@pytest.mark.parametrize("width, height", [("1e12", "1e12"), ("inf", "100"), ("200", "1e999"), ("100000", "100000")])
def test_absurd_declared_size_rejected(tmp_path, width, height):
    xml = annotation_xml(box_xml("dog", 10, 10, 50, 50), size=f"<size><width>{width}</width><height>{height}</height></size>")
    with pytest.raises(DataError, match=rf"000005\.xml: <size> declares {width} x {height} pixels, more than the limit"):
        load_one(tmp_path, xml)


@pytest.mark.parametrize("size", [(40, 40), (100, 100)])
def test_decompression_bomb_rejected_at_load(tmp_path, monkeypatch, size):
    # 1 600 pixels is between the lowered limit and twice it (PIL only warns there);
    # 10 000 is over twice the limit (PIL raises).
    xml = annotation_xml(box_xml("dog", 1, 1, 20, 20), size="")
    year = make_year_folder(tmp_path, {"000005": xml}, {"000005": size})
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    image_path = year / "JPEGImages" / "000005.jpg"
    with pytest.raises(DataError) as raised:
        load_voc(year, "trainval")
    message = str(raised.value)
    assert message.startswith(f"{image_path}: rejected as a possible decompression bomb")
    assert "at most 1000 pixels" in message
    with pytest.raises(DataError, match="decompression bomb"):
        read_image(image_path)


def test_real_decompression_bomb_rejected(tmp_path):
    # A 20000 x 10000 one-bit PNG: about 25 kB on disk, 200 million pixels when decoded,
    # more than twice PIL's default limit.
    path = tmp_path / "bomb.png"
    PIL.Image.new("1", (20000, 10000)).save(path)
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match=r"bomb\.png: rejected as a possible decompression bomb"):
        read_image(path)


# ---------------------------------------------------------------------------
# The XML reader on random and mutated annotations: it loads or raises DataError.

VALID = annotation_xml(box_xml("dog", 10, 20, 50, 60) + box_xml("cat", "1.5", "2", "30", "40", difficult="1"))

NUMBERS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e999", "0x10", "1,5", "١٢", "12abc", "&#49;"]),
)


@st.composite
def annotation_documents(draw) -> str:
    objects = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.text(string.ascii_letters + " <>&'\"", max_size=8))
        coords = [draw(NUMBERS) for _ in range(4)]
        difficult = draw(st.one_of(st.none(), NUMBERS))
        objects.append(box_xml(_escape(name), *map(_escape, coords), difficult=None if difficult is None
                               else _escape(difficult)))
    size = draw(st.sampled_from(["", "<size><width>{}</width><height>{}</height></size>"]))
    if size:
        size = size.format(_escape(draw(NUMBERS)), _escape(draw(NUMBERS)))
    return annotation_xml("".join(objects), size=size)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mutate(document: bytes, data) -> bytes:
    """Delete, insert or replace a few bytes at random places."""
    raw = bytearray(document)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        chunk = data.draw(st.binary(min_size=1, max_size=4) | st.sampled_from(
            [b"<", b">", b"&", b"<!ENTITY a 'b'>", b"<!DOCTYPE x [", b"]>", b"\x00", b"\xff\xfe", b"</object>"]))
        if action == "delete":
            del raw[position:position + len(chunk)]
        elif action == "insert":
            raw[position:position] = chunk
        else:
            raw[position:position + len(chunk)] = chunk
    return bytes(raw)


def _parse_or_data_error(path: Path, document: bytes):
    path.write_bytes(document)
    try:
        names, voc_boxes, difficult, size, raw = parse_annotation(path)
    except DataError as error:
        assert str(path) in str(error)
        return None
    assert voc_boxes.shape == (len(names), 4)
    assert np.isfinite(voc_boxes).all()
    assert difficult.shape == (len(names),)
    assert raw == document
    if size is not None:
        assert size[0] >= 1
        assert size[1] >= 1
    return names


@PROFILE
@given(document=annotation_documents())
def test_reader_on_random_annotations(tmp_path, document):
    _parse_or_data_error(tmp_path / "000005.xml", document.encode("utf-8"))


@PROFILE
@given(data=st.data())
def test_reader_on_mutated_annotations(tmp_path, data):
    _parse_or_data_error(tmp_path / "000005.xml", _mutate(VALID.encode("utf-8"), data))


@PROFILE
@given(document=st.binary(max_size=200))
def test_reader_on_random_bytes(tmp_path, document):
    _parse_or_data_error(tmp_path / "000005.xml", document)


def test_reader_accepts_unmutated_document(tmp_path):
    # The mutation test starts from a document that loads, so its examples are near-valid.
    assert _parse_or_data_error(tmp_path / "000005.xml", VALID.encode("utf-8")) == ["dog", "cat"]


# ---------------------------------------------------------------------------
# The evaluator on random detections: AP in [0, 1], independent of the detections' order.

CLASSES = ("a", "b")


@st.composite
def evaluation_inputs(draw):
    n_images = draw(st.integers(1, 3))
    corner = st.floats(0, 90, allow_nan=False, width=32)
    extent = st.floats(1, 40, allow_nan=False, width=32)

    def boxes(count):
        rows = []
        for _ in range(count):
            x, y, w, h = draw(corner), draw(corner), draw(extent), draw(extent)
            rows.append([x, y, x + w, y + h])
        return np.asarray(rows, dtype=np.float64).reshape(-1, 4)

    n_gt = draw(st.integers(0, 6))
    n_det = draw(st.integers(0, 12))
    gt = {
        "image": np.asarray([draw(st.integers(0, n_images - 1)) for _ in range(n_gt)], dtype=np.int64),
        "label": np.asarray([draw(st.integers(0, 1)) for _ in range(n_gt)], dtype=np.int64),
        "boxes": boxes(n_gt),
        "difficult": np.asarray([draw(st.booleans()) for _ in range(n_gt)], dtype=bool),
    }
    # Scores from a small set, so equal scores (ties) occur often.
    det = {
        "image": np.asarray([draw(st.integers(0, n_images - 1)) for _ in range(n_det)], dtype=np.int64),
        "label": np.asarray([draw(st.integers(0, 1)) for _ in range(n_det)], dtype=np.int64),
        "score": np.asarray([draw(st.sampled_from([0.1, 0.5, 0.5, 0.9, 1.0])) for _ in range(n_det)]),
        "boxes": boxes(n_det),
    }
    order = draw(st.permutations(list(range(n_det))))
    return gt, det, np.asarray(order, dtype=np.int64)


def _evaluate(gt, det, order):
    return evaluate_detections(det["image"][order], det["label"][order], det["score"][order], det["boxes"][order],
                               gt["image"], gt["label"], gt["boxes"], gt["difficult"], CLASSES)


@PROFILE
@given(inputs=evaluation_inputs())
def test_ap_bounded_and_order_free(inputs):
    gt, det, order = inputs
    identity = np.arange(len(det["score"]), dtype=np.int64)
    result = _evaluate(gt, det, identity)
    shuffled = _evaluate(gt, det, order)

    for values in (result.ap_voc07, result.ap_area):
        present = values[~np.isnan(values)]
        assert (present >= 0).all()
        assert (present <= 1 + 1e-12).all()
    np.testing.assert_allclose(shuffled.ap_voc07, result.ap_voc07, rtol=0, atol=1e-12)
    np.testing.assert_allclose(shuffled.ap_area, result.ap_area, rtol=0, atol=1e-12)
    for index in range(len(CLASSES)):
        expected_nan = result.n_gt[index] == 0
        assert np.isnan(result.ap_voc07[index]) == expected_nan
