"""The evaluation command line, `python -m yolonb.eval`, on tiny VOC folders written per test."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("yolonb.data", reason="the VOC reader yolonb.data is not available")

from yolonb.eval.__main__ import main  # noqa: E402


def write_voc(root: Path, images: dict, split: str = "test") -> Path:
    """Write a VOC2007 year folder; ``images`` maps id -> ((width, height), [(name, (xmin, ymin, xmax, ymax), difficult)])."""
    year = root / "VOCdevkit" / "VOC2007"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / folder).mkdir(parents=True, exist_ok=True)

    for image_id, ((width, height), objects) in images.items():
        Image.new("RGB", (width, height), (90, 120, 150)).save(year / "JPEGImages" / f"{image_id}.jpg")
        object_xml = "".join(
            f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox>"
            f"<xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
            "</bndbox></object>"
            for name, box, difficult in objects
        )
        (year / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{object_xml}</annotation>"
        )
    (year / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    return root / "VOCdevkit"


@pytest.fixture
def small_voc(tmp_path):
    """Two images with trucks (one difficult) and a lamp; detections for truck, lamp and tram.

    The class names are not VOC classes, so the class list comes from the annotations and
    the detection files: lamp, tram, truck.
    """
    devkit = write_voc(tmp_path / "data", {
        "000001": ((100, 80), [("truck", (11, 11, 40, 40), False), ("lamp", (51, 21, 90, 70), False)]),
        "000002": ((100, 80), [("truck", (5, 5, 30, 30), False), ("truck", (50, 50, 70, 70), True)]),
    })
    detections = tmp_path / "detections"
    detections.mkdir()
    # truck: 0.9 exact on 000001 (TP), 0.8 on the difficult truck (ignored), 0.7 on empty ground (FP),
    # 0.6 exact on 000002 (TP). With 2 non-difficult trucks the points are (0.5, 1), (0.5, 0.5), (1, 2/3):
    # area AP = 0.5 * 1 + 0.5 * 2/3 = 0.833333; 11-point AP = (6 * 1 + 5 * 2/3) / 11 = 0.848485.
    (detections / "comp4_det_test_truck.txt").write_text(
        "000001 0.9 11 11 40 40\n"
        "000002 0.8 50 50 70 70\n"
        "000002 0.7 60 5 80 20\n"
        "000002 0.6 5 5 30 30\n"
    )
    # lamp: one detection far from the lamp -> AP 0.
    (detections / "comp4_det_test_lamp.txt").write_text("000001 0.5 1 1 10 10\n")
    # tram: no tram in the annotations -> "no ground truth", left out of the mAP.
    (detections / "comp4_det_test_tram.txt").write_text("000002 0.4 1 1 10 10\n")
    # mAP over truck and lamp: 11-point (0.848485 + 0) / 2 = 0.424242, area (0.833333 + 0) / 2 = 0.416667.
    return devkit, detections


def test_cli_table(small_voc, capsys):
    devkit, detections = small_voc
    code = main(["--annotations", str(devkit), "--split", "test", "--detections", str(detections)])
    output = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in output.splitlines()[3:6]}
    assert rows["truck"] == ["0.8485", "2", "4"]
    assert rows["tram"] == ["no", "ground", "truth", "0", "1"]
    assert rows["lamp"] == ["0.0000", "1", "1"]
    assert "mAP over 2 of 3 classes with ground truth: 0.4242" in output


def test_cli_area_metric(small_voc, capsys):
    devkit, detections = small_voc
    code = main(["--annotations", str(devkit), "--split", "2007/test", "--detections", str(detections),
                 "--metric", "area"])
    output = capsys.readouterr().out
    assert code == 0
    assert "VOC2010+ area" in output
    assert "0.8333" in output
    assert "mAP over 2 of 3 classes with ground truth: 0.4167" in output


def test_cli_json(small_voc, capsys):
    devkit, detections = small_voc
    code = main(["--annotations", str(devkit), "--split", "test", "--detections", str(detections), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["classes"] == ["lamp", "tram", "truck"]
    assert data["per_class_ap"]["truck"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert data["per_class_ap_area"]["truck"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert data["per_class_ap"]["tram"] is None
    assert data["n_gt"] == {"lamp": 1, "tram": 0, "truck": 2}
    assert data["map"] == pytest.approx((6 + 5 * 2 / 3) / 22)


def test_cli_malformed_line(small_voc, capsys):
    devkit, detections = small_voc
    bad = detections / "comp4_det_test_lamp.txt"
    bad.write_text("000001 0.5 1 1 10 10\n000001 0.5 1 1 10\n")
    code = main(["--annotations", str(devkit), "--split", "test", "--detections", str(detections)])
    error = capsys.readouterr().err
    assert code == 1
    assert f"{bad}, line 2" in error
    assert "expected 'image_id score xmin ymin xmax ymax'" in error


def test_cli_unknown_image_id(small_voc, capsys):
    devkit, detections = small_voc
    (detections / "comp4_det_test_lamp.txt").write_text("000009 0.5 1 1 10 10\n")
    code = main(["--annotations", str(devkit), "--split", "test", "--detections", str(detections)])
    assert code == 1
    assert "'000009' is not in split 'test'" in capsys.readouterr().err


def test_cli_voc_pair_iou(tmp_path, capsys):
    # Ground truth [278, 299, 302, 326] and detection [286.58, 301.95, 300.10, 326.75] are both in VOC
    # file coordinates. Their IoU is 0.512 with VOC's +1 pixel convention, a match at 0.5 and AP 1.
    # Unshifted continuous coordinates would give 0.494, a miss and AP 0.
    devkit = write_voc(tmp_path / "data", {"000005": ((500, 375), [("light", (278, 299, 302, 326), False)])})
    detections = tmp_path / "detections"
    detections.mkdir()
    (detections / "comp4_det_test_light.txt").write_text("000005 0.9 286.58 301.95 300.10 326.75\n")
    code = main(["--annotations", str(devkit), "--split", "test", "--detections", str(detections), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["per_class_ap"] == {"light": 1.0}


def test_cli_module_entry_point():
    # --help exits before the data layer (and torch) is imported, so this stays fast;
    # the tests above run the same main() on real folders.
    completed = subprocess.run(
        [sys.executable, "-m", "yolonb.eval", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert "--detections" in completed.stdout
    assert "--metric {voc07,area}" in completed.stdout
