"""VOC AP of yolonb.eval on small cases whose APs are computed by hand in the comments."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from yolonb.eval import (
    DetectionFileError,
    area_ap,
    evaluate_detections,
    evaluate_records,
    read_comp4_detections,
    voc07_ap,
    write_comp4_detections,
)

BOX_A = [0.0, 0.0, 10.0, 10.0]
BOX_B = [20.0, 20.0, 30.0, 30.0]
BOX_C = [40.0, 40.0, 50.0, 50.0]
FAR = [100.0, 100.0, 110.0, 110.0]


def evaluate(dets, gts, classes=("a",), **kwargs):
    """Evaluate lists of (image, label, score, box) detections and (image, label, box, difficult) ground truths."""
    det_image = [d[0] for d in dets]
    det_label = [d[1] for d in dets]
    det_score = [d[2] for d in dets]
    det_boxes = np.array([d[3] for d in dets], dtype=np.float64).reshape(-1, 4)
    gt_image = [g[0] for g in gts]
    gt_label = [g[1] for g in gts]
    gt_boxes = np.array([g[2] for g in gts], dtype=np.float64).reshape(-1, 4)
    gt_difficult = [g[3] for g in gts]
    return evaluate_detections(det_image, det_label, det_score, det_boxes,
                               gt_image, gt_label, gt_boxes, gt_difficult, classes, **kwargs)


def test_perfect_detections_give_ap_one():
    # Two ground truths, two exact detections: precision 1 at recall 0.5 and 1.
    result = evaluate([("img", 0, 0.9, BOX_A), ("img", 0, 0.8, BOX_B)],
                      [("img", 0, BOX_A, False), ("img", 0, BOX_B, False)])
    assert result.ap_voc07[0] == pytest.approx(1.0)
    assert result.ap_area[0] == pytest.approx(1.0)
    np.testing.assert_allclose(result.recall[0], [0.5, 1.0])
    np.testing.assert_allclose(result.precision[0], [1.0, 1.0])


def test_duplicates_are_false_positives_and_metrics_differ():
    # Ground truths A and B. Detections: 0.9 on A (TP), 0.8 on A again (FP, A taken), 0.7 on B (TP).
    # Points (recall, precision): (0.5, 1), (0.5, 0.5), (1, 2/3).
    # Area: envelope 1 on recall (0, 0.5], 2/3 on (0.5, 1] -> 0.5 * 1 + 0.5 * 2/3 = 0.833333.
    # 11-point: t = 0 .. 0.5 (6 thresholds) max precision 1, t = 0.6 .. 1 (5) 2/3
    #   -> (6 * 1 + 5 * 2/3) / 11 = 9.333333 / 11 = 0.848485.
    result = evaluate([("img", 0, 0.9, BOX_A), ("img", 0, 0.8, BOX_A), ("img", 0, 0.7, BOX_B)],
                      [("img", 0, BOX_A, False), ("img", 0, BOX_B, False)])
    assert result.ap_area[0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert result.ap_voc07[0] == pytest.approx((6 + 5 * 2 / 3) / 11)
    np.testing.assert_allclose(result.precision[0], [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(result.recall[0], [0.5, 0.5, 1.0])


def test_difficult_match_is_ignored():
    # Ground truths: A normal, B difficult, so n_gt = 1.
    # 0.9 on B: ignored. 0.8 on C (no ground truth there): FP. 0.7 on A: TP.
    # Counted points: (recall 0, precision 0), (1, 0.5) -> area 1 * 0.5 = 0.5, 11-point 0.5 at every t.
    # Were difficult boxes positives, the AP would be 0.833; were their matches FPs, 1/3.
    result = evaluate([("img", 0, 0.9, BOX_B), ("img", 0, 0.8, BOX_C), ("img", 0, 0.7, BOX_A)],
                      [("img", 0, BOX_A, False), ("img", 0, BOX_B, True)])
    assert result.n_gt[0] == 1
    assert result.n_det[0] == 3
    assert result.ap_area[0] == pytest.approx(0.5)
    assert result.ap_voc07[0] == pytest.approx(0.5)
    np.testing.assert_allclose(result.precision[0], [0.0, 0.5])


def test_highest_iou_difficult_wins_over_normal():
    # The detection [0, 0, 10, 9] overlaps difficult [0, 0, 10, 9] with IoU 1 and normal
    # [0, 0, 10, 10] with IoU 90/100 = 0.9. As in the devkit it takes the highest-IoU box,
    # the difficult one, so it is ignored and the normal box stays unmatched: no counted
    # detection, recall 0, AP 0.
    result = evaluate([("img", 0, 0.9, [0, 0, 10, 9])],
                      [("img", 0, BOX_A, False), ("img", 0, [0, 0, 10, 9], True)])
    assert result.ap_voc07[0] == 0.0
    assert result.ap_area[0] == 0.0
    assert len(result.precision[0]) == 0


def test_taken_best_match_is_false_positive():
    # Ground truths G1 = [0, 0, 10, 10] and G2 = [0, 5, 10, 15].
    # 0.9: [0, 0, 10, 10] takes G1 (IoU 1), TP.
    # 0.8: [0, 2, 10, 12] has IoU 80/120 = 0.667 with G1 and 70/130 = 0.538 with G2. It takes its
    #   highest-IoU box G1, which is taken, so it is an FP although G2 also overlaps it by more than
    #   0.5 (the devkit's rule).
    # 0.7: [0, 3, 10, 13] has IoU 70/130 = 0.538 with G1 and 80/120 = 0.667 with G2: takes G2, TP.
    # Points (0.5, 1), (0.5, 0.5), (1, 2/3) -> area 0.5 + 0.5 * 2/3 = 0.833333; a rule that took the
    # best free box would give TP, TP, FP and AP 1.
    result = evaluate([("img", 0, 0.9, BOX_A), ("img", 0, 0.8, [0, 2, 10, 12]), ("img", 0, 0.7, [0, 3, 10, 13])],
                      [("img", 0, BOX_A, False), ("img", 0, [0, 5, 10, 15], False)])
    assert result.ap_area[0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    np.testing.assert_allclose(result.precision[0], [1.0, 0.5, 2 / 3])


def test_no_detections_give_ap_zero():
    result = evaluate([], [("img", 0, BOX_A, False), ("img", 0, BOX_B, False)])
    assert result.ap_voc07[0] == 0.0
    assert result.ap_area[0] == 0.0
    assert result.n_gt[0] == 2
    assert result.n_det[0] == 0
    assert result.map_voc07 == 0.0
    assert len(result.recall[0]) == 0


def test_all_wrong_detections_give_ap_zero():
    # One FP far away, one on the right box with the wrong class, one in another image: recall stays 0.
    result = evaluate([("img", 0, 0.9, FAR), ("img", 1, 0.8, BOX_A), ("other", 0, 0.7, BOX_A)],
                      [("img", 0, BOX_A, False)], classes=("a", "b"))
    assert result.ap_voc07[0] == 0.0
    assert result.ap_area[0] == 0.0
    np.testing.assert_allclose(result.precision[0], [0.0, 0.0])


def test_class_without_ground_truth_is_nan():
    # Class "b" has a detection but no ground truth: NaN, None in to_dict, left out of the mean.
    # Class "a": one exact detection -> AP 1, so the mean over classes with ground truth is 1.
    result = evaluate([("img", 0, 0.9, BOX_A), ("img", 1, 0.8, BOX_B)],
                      [("img", 0, BOX_A, False)], classes=("a", "b", "c"))
    assert math.isnan(result.ap_voc07[1])
    assert math.isnan(result.ap_area[2])
    assert result.map_voc07 == pytest.approx(1.0)
    assert result.map_area == pytest.approx(1.0)

    data = result.to_dict()
    assert data["per_class_ap"] == {"a": 1.0, "b": None, "c": None}
    assert data["per_class_ap_area"]["b"] is None
    assert data["n_gt"] == {"a": 1, "b": 0, "c": 0}
    assert data["n_detections"] == {"a": 1, "b": 1, "c": 0}
    json.dumps(data, allow_nan=False)


def test_only_difficult_ground_truth_is_nan():
    result = evaluate([("img", 0, 0.9, BOX_A)], [("img", 0, BOX_A, True)])
    assert math.isnan(result.ap_voc07[0])
    assert math.isnan(result.map_voc07)
    assert result.to_dict()["map_voc07"] is None


def test_equal_scores_form_one_threshold():
    # One ground truth; a TP and an FP both at score 1.0. They form one threshold:
    # precision 1/2 at recall 1, so AP 0.5 for both metrics, in either input order
    # (counted one by one, the devkit gives 1.0 or 0.5 depending on the order).
    tp = ("img", 0, 1.0, BOX_A)
    fp = ("img", 0, 1.0, FAR)
    for dets in ([tp, fp], [fp, tp]):
        result = evaluate(dets, [("img", 0, BOX_A, False)])
        assert result.ap_voc07[0] == pytest.approx(0.5)
        assert result.ap_area[0] == pytest.approx(0.5)
        np.testing.assert_allclose(result.precision[0], [0.5])
        np.testing.assert_allclose(result.recall[0], [1.0])


def test_tied_duplicates_on_one_box():
    # Two tied detections on the same box and a lower TP on a second box (2 ground truths).
    # At score 0.9: 2 detections, 1 TP -> (0.5, 0.5); at 0.5: 3 detections, 2 TP -> (1, 2/3).
    # Area: 0.5 * 2/3 + 0.5 * 2/3 = 0.666667 (the envelope is 2/3 everywhere).
    dets = [("img", 0, 0.9, BOX_A), ("img", 0, 0.9, [0, 0, 10, 9]), ("img", 0, 0.5, BOX_B)]
    result = evaluate(dets, [("img", 0, BOX_A, False), ("img", 0, BOX_B, False)])
    assert result.ap_area[0] == pytest.approx(2 / 3)
    assert result.ap_voc07[0] == pytest.approx(2 / 3)


def test_iou_exactly_threshold_is_match():
    # [0, 0, 10, 5] inside [0, 0, 10, 10]: IoU 50 / 100 = 0.5, a match with the devkit's >=.
    result = evaluate([("img", 0, 0.9, [0, 0, 10, 5])], [("img", 0, BOX_A, False)])
    assert result.ap_voc07[0] == 1.0


def test_voc07_recall_exactly_on_threshold():
    # 10 ground truths, 3 found at precision 1: recall 0.3 exactly reaches t = 0, 0.1, 0.2, 0.3,
    # so 11-point AP = 4 / 11 = 0.363636 (0:0.1:1 in floating point would give 3 / 11).
    # Area: 0.3 * 1 = 0.3.
    gts = [("img", 0, [10.0 * i, 0, 10.0 * i + 5, 5], False) for i in range(10)]
    dets = [("img", 0, 0.9 - 0.1 * i, [10.0 * i, 0, 10.0 * i + 5, 5]) for i in range(3)]
    result = evaluate(dets, gts)
    assert result.ap_voc07[0] == pytest.approx(4 / 11)
    assert result.ap_area[0] == pytest.approx(0.3)


def test_ap_functions_on_curve():
    # Points (recall, precision): (0.2, 1), (0.4, 0.5), (0.8, 0.5).
    # Area: 0.2 * 1 + 0.6 * 0.5 = 0.5. 11-point: t = 0, 0.1, 0.2 -> 1; t = 0.3 .. 0.8 (6) -> 0.5;
    # t = 0.9, 1 -> 0. (3 + 3) / 11 = 0.545455.
    precision = np.array([1.0, 0.5, 0.5])
    recall = np.array([0.2, 0.4, 0.8])
    assert area_ap(precision, recall) == pytest.approx(0.5)
    assert voc07_ap(precision, recall) == pytest.approx(6 / 11)


def test_mean_over_classes():
    # Class a: AP 1 (exact hit). Class b: FP at 0.9, TP at 0.8 -> (0, 0), (1, 0.5): AP 0.5.
    # mAP = (1 + 0.5) / 2 = 0.75.
    result = evaluate([("i", 0, 0.9, BOX_A), ("i", 1, 0.9, FAR), ("i", 1, 0.8, BOX_B)],
                      [("i", 0, BOX_A, False), ("i", 1, BOX_B, False)], classes=("a", "b"))
    np.testing.assert_allclose(result.ap_area, [1.0, 0.5])
    assert result.map_area == pytest.approx(0.75)
    assert result.map("voc07") == pytest.approx(0.75)


def random_case(seed: int):
    """Detections with many tied scores (one decimal) over 4 images and 2 classes."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for image in range(4):
        for _ in range(3):
            x, y = rng.uniform(0, 80, size=2)
            box = [x, y, x + rng.uniform(5, 20), y + rng.uniform(5, 20)]
            label = int(rng.integers(0, 2))
            gts.append((f"im{image}", label, box, bool(rng.random() < 0.2)))
            for _ in range(int(rng.integers(0, 3))):
                jitter = rng.normal(0, 2, size=4)
                x_min, y_min = box[0] + jitter[0], box[1] + jitter[1]
                # A large shift of the low corner must not invert the box.
                jittered = [x_min, y_min, max(box[2] + abs(jitter[2]) + 1, x_min + 1),
                            max(box[3] + abs(jitter[3]) + 1, y_min + 1)]
                dets.append((f"im{image}", label, round(float(rng.random()), 1), jittered))
        for _ in range(3):
            x, y = rng.uniform(0, 80, size=2)
            dets.append((f"im{image}", int(rng.integers(0, 2)), round(float(rng.random()), 1), [x, y, x + 10, y + 10]))
    return dets, gts


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**16), permutation_seed=st.integers(0, 2**16))
def test_shuffled_input_same_ap(seed, permutation_seed):
    dets, gts = random_case(seed)
    permutation = np.random.default_rng(permutation_seed).permutation(len(dets))
    shuffled = [dets[i] for i in permutation]

    reference = evaluate(dets, gts, classes=("a", "b"))
    result = evaluate(shuffled, gts, classes=("a", "b"))
    np.testing.assert_array_equal(result.ap_voc07, reference.ap_voc07)
    np.testing.assert_array_equal(result.ap_area, reference.ap_area)
    for c in range(2):
        np.testing.assert_array_equal(result.precision[c], reference.precision[c])
        np.testing.assert_array_equal(result.recall[c], reference.recall[c])


def test_voc_pair_iou_through_comp4_reader(tmp_path):
    # VOC file boxes [278, 299, 302, 326] (ground truth) and [286.58, 301.95, 300.10, 326.75]
    # (detection). The reader shifts xmin and ymin by -1: [277, 298, 302, 326] and
    # [285.58, 300.95, 300.10, 326.75]. Intersection 14.52 * 25.05 = 363.726; areas 25 * 28 = 700 and
    # 14.52 * 25.8 = 374.616; IoU = 363.726 / 710.89 = 0.51165, the devkit's 0.512
    # (unshifted, the IoU would be 0.494 and the detection would miss at 0.5).
    (tmp_path / "comp4_det_test_light.txt").write_text("000005 0.9 286.58 301.95 300.10 326.75\n")
    detections = read_comp4_detections(tmp_path, "test", ["light"], image_ids=["000005"])
    np.testing.assert_allclose(detections.boxes, [[285.58, 300.95, 300.10, 326.75]])

    gt_boxes = np.array([[277.0, 298.0, 302.0, 326.0]])
    for threshold, expected in ((0.5, 1.0), (0.511, 1.0), (0.512, 0.0)):
        result = evaluate_detections(detections.image_ids, detections.labels, detections.scores, detections.boxes,
                                     ["000005"], [0], gt_boxes, [False], ["light"], iou_threshold=threshold)
        assert result.ap_voc07[0] == expected, f"IoU threshold {threshold}"


def test_comp4_round_trip(tmp_path):
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [5.5, 6.25, 20.0, 30.0]])
    predictions = [{"boxes": boxes, "scores": np.array([0.9, 0.3]), "labels": np.array([1, 0])}]
    paths = write_comp4_detections(tmp_path, "test", ["a", "b"], ["000001"], predictions)
    assert [p.name for p in paths] == ["comp4_det_test_a.txt", "comp4_det_test_b.txt"]
    # VOC 1-based: xmin and ymin are written one higher.
    assert paths[1].read_text().split() == ["000001", "0.9", "1.0", "1.0", "10.0", "10.0"]

    detections = read_comp4_detections(tmp_path, "test", ["a", "b"])
    assert detections.image_ids.tolist() == ["000001", "000001"]
    assert detections.labels.tolist() == [0, 1]
    np.testing.assert_allclose(detections.scores, [0.3, 0.9])
    np.testing.assert_allclose(detections.boxes, boxes[[1, 0]])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("000001 0.9 1 2 3\n", "5 fields"),
        ("000001 high 1 2 3 4\n", "non-number"),
        ("000001 0.9 1 2 3 nan\n", "non-finite"),
        ("000001 0.9 10 10 5 20\n", "xmax < xmin - 1"),
        ("999999 0.9 1 2 3 4\n", "not in split"),
    ],
)
def test_comp4_malformed_line(tmp_path, line, message):
    path = tmp_path / "comp4_det_test_a.txt"
    path.write_text("000001 0.5 1 1 5 5\n\n" + line)
    with pytest.raises(DetectionFileError) as info:
        read_comp4_detections(tmp_path, "test", ["a"], image_ids=["000001"])
    assert str(path) in str(info.value)
    assert "line 3" in str(info.value)
    assert message in str(info.value)


def test_comp4_unknown_class_file(tmp_path):
    (tmp_path / "comp4_det_test_a.txt").write_text("")
    (tmp_path / "comp4_det_test_zebra.txt").write_text("")
    with pytest.raises(DetectionFileError, match="zebra"):
        read_comp4_detections(tmp_path, "test", ["a"])


def test_comp4_no_files_for_split(tmp_path):
    (tmp_path / "comp4_det_val_a.txt").write_text("")
    with pytest.raises(DetectionFileError, match="no comp4_det_test_<class>.txt files"):
        read_comp4_detections(tmp_path, "test", ["a"])


class StandInRecord:
    """The fields of yolonb.data.ImageRecord that the evaluator reads."""

    def __init__(self, image_id, boxes, labels, difficult):
        self.image_id = image_id
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.difficult = np.asarray(difficult, dtype=bool)


def test_evaluate_records_matches_flat_arrays():
    # Image 0: A (class 0), B (class 1, difficult). Image 1: A (class 1). Image 2: no objects.
    # Same boxes in different images must not match each other.
    records = [
        StandInRecord("0", [BOX_A, BOX_B], [0, 1], [False, True]),
        StandInRecord("1", [BOX_A], [1], [False]),
        StandInRecord("2", [], [], []),
    ]
    predictions = [
        {"boxes": torch.tensor([BOX_A, BOX_B]), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([BOX_B, BOX_A]), "scores": torch.tensor([0.7, 0.6]), "labels": torch.tensor([1, 1])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    result = evaluate_records(records, predictions, ["a", "b"])
    # Class a: one exact hit -> 1. Class b: the 0.8 detection is on the difficult box (ignored),
    # 0.7 on B in image 1 is an FP, 0.6 on A in image 1 is a TP -> (0, 0), (1, 0.5): AP 0.5.
    np.testing.assert_allclose(result.ap_area, [1.0, 0.5])
    np.testing.assert_array_equal(result.n_gt, [1, 1])
    np.testing.assert_array_equal(result.n_det, [1, 3])

    flat = evaluate([(0, 0, 0.9, BOX_A), (0, 1, 0.8, BOX_B), (1, 1, 0.7, BOX_B), (1, 1, 0.6, BOX_A)],
                    [(0, 0, BOX_A, False), (0, 1, BOX_B, True), (1, 1, BOX_A, False)], classes=("a", "b"))
    np.testing.assert_allclose(result.ap_voc07, flat.ap_voc07)


def test_evaluate_records_rejects_mismatch():
    records = [StandInRecord("0", [BOX_A], [0], [False])]
    with pytest.raises(ValueError, match="1 records but 2 predictions"):
        evaluate_records(records, [{}, {}], ["a"])
    with pytest.raises(ValueError, match="lacks 'scores'"):
        evaluate_records(records, [{"boxes": np.zeros((0, 4))}], ["a"])
    bad = {"boxes": np.zeros((2, 4)), "scores": np.zeros(2), "labels": np.zeros(1, dtype=np.int64)}
    with pytest.raises(ValueError, match="1 labels but 2 scores"):
        evaluate_records(records, [bad], ["a"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"det_label": [3]}, "outside \\[0, 1\\)"),
        ({"det_score": [float("nan")]}, "non-finite score"),
        ({"det_boxes": [[10, 0, 0, 10]]}, "x_max < x_min"),
        ({"det_image": ["a", "b"]}, "different lengths"),
        ({"iou_threshold": 0.0}, "outside \\(0, 1\\]"),
    ],
)
def test_invalid_input_rejected(change, message):
    arguments = {
        "det_image": ["a"], "det_label": [0], "det_score": [0.5], "det_boxes": [BOX_A],
        "gt_image": ["a"], "gt_label": [0], "gt_boxes": [BOX_A], "gt_difficult": [False],
        "classes": ["a"],
    }
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        evaluate_detections(**arguments)
