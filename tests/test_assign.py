"""Label assignment: level, cell, offsets, box weight, conflicts, neighbours, difficult boxes.

The layout used throughout is a 64 x 64 input with strides 8, 16, 32. Its levels have
8 x 8, 4 x 4 and 2 x 2 cells, so level 1 starts at flat index 64 and level 2 at 80.
Level bounds on the longer side: up to 64 / 8 = 8 pixels on level 0, up to 16 pixels
on level 1, larger on level 2.
"""

import math

import pytest
import torch

from yolonb.models.assign import assign_targets, level_upper_bounds, make_grid

IMAGE_SIZE = 64
SHAPES = [(8, 8), (4, 4), (2, 2)]
STRIDES = (8, 16, 32)
NUM_CELLS = 64 + 16 + 4


def target(boxes, labels, difficult=None):
    result = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if difficult is not None:
        result["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return result


def positive_cells(assignment, image=0):
    return assignment.positive[image].nonzero().flatten().tolist()


def test_make_grid_order_and_strides():
    grid, stride = make_grid([(2, 3), (1, 2)], (8, 16), device="cpu")

    expected_grid = [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1], [0, 0], [1, 0]]
    assert grid.tolist() == expected_grid
    assert stride.tolist() == [8, 8, 8, 8, 8, 8, 16, 16]


def test_make_grid_rejects_mismatched_levels():
    with pytest.raises(ValueError, match="2 level shapes but 1 strides"):
        make_grid([(2, 2), (1, 1)], (8,))


def test_level_bounds():
    assert level_upper_bounds((8, 16, 32)) == [0.125, 0.25, math.inf]
    assert level_upper_bounds((32,)) == [math.inf]


def test_boxes_go_to_level_cell_and_offsets():
    # A: 8 x 16 pixels, longer side 16 = 0.25 of the input: level 1 (stride 16).
    #    Centre (8, 12) is in cell (0, 0): tx = 8/16 = 0.5, ty = 12/16 = 0.75,
    #    tw = log(8/16), th = log(16/16) = 0, weight 2 - 128/4096.
    # B: 30 x 32 pixels, 0.5 of the input: level 2 (stride 32). Centre (45, 46) is in
    #    cell (1, 1) = flat 80 + 3: tx = 45/32 - 1, ty = 46/32 - 1, tw = log(30/32).
    # C: 6 x 4 pixels, 0.094 of the input: level 0 (stride 8). Centre (21, 34) is in
    #    cell (2, 4) = flat 4 * 8 + 2 = 34: tx = 21/8 - 2, ty = 34/8 - 4.
    boxes = [[4, 4, 12, 20], [30, 30, 60, 62], [18, 32, 24, 36]]
    assignment = assign_targets([target(boxes, [1, 2, 0])], SHAPES, STRIDES, IMAGE_SIZE, "center", 3)

    assert positive_cells(assignment) == [34, 64, 83]
    assert assignment.num_positives == 3
    assert assignment.labels[0, [34, 64, 83]].tolist() == [0, 1, 2]
    assert (assignment.labels[0, ~assignment.positive[0]] == -1).all()

    expected = torch.tensor(
        [
            [0.625, 0.25, math.log(6 / 8), math.log(4 / 8)],
            [0.5, 0.75, math.log(0.5), 0.0],
            [0.40625, 0.4375, math.log(30 / 32), 0.0],
        ]
    )
    torch.testing.assert_close(assignment.box_target[0, [34, 64, 83]], expected)
    torch.testing.assert_close(assignment.gt_boxes[0, [34, 64, 83]], torch.tensor(boxes, dtype=torch.float32)[[2, 0, 1]])


def test_box_weight():
    boxes = [[4, 4, 12, 20], [30, 30, 60, 62]]
    assignment = assign_targets([target(boxes, [1, 2])], SHAPES, STRIDES, IMAGE_SIZE, "center", 3)

    # 2 - area / image area: 2 - 128/4096 and 2 - 960/4096.
    weights = assignment.box_weight[0, [64, 83]].tolist()
    assert weights == pytest.approx([1.96875, 1.765625])
    assert float(assignment.box_weight[0].sum()) == pytest.approx(1.96875 + 1.765625)


def test_ltrb_distances_in_stride_units():
    # Box A on level 1, cell (0, 0) with centre (8, 8):
    # left 8 - 4 = 4, top 8 - 4 = 4, right 12 - 8 = 4, bottom 20 - 8 = 12 pixels.
    assignment = assign_targets([target([[4, 4, 12, 20]], [1])], SHAPES, STRIDES, IMAGE_SIZE, "center", 3)

    assert assignment.ltrb[0, 64].tolist() == [0.25, 0.25, 0.25, 0.75]


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_shared_cell_smaller_box_wins(order):
    # Both are 13 to 16 pixels on the longer side (level 1) with centres in cell (1, 1):
    # big 16 x 16 centred at (24, 24), small 14 x 10 centred at (20, 22).
    boxes = [[16, 16, 32, 32], [13, 17, 27, 27]]
    labels = [0, 1]
    image = target([boxes[i] for i in order], [labels[i] for i in order])
    assignment = assign_targets([image], SHAPES, STRIDES, IMAGE_SIZE, "center", 2)

    cell = 64 + 1 * 4 + 1
    assert positive_cells(assignment) == [cell]
    assert int(assignment.labels[0, cell]) == 1
    assert assignment.box_target[0, cell, :2].tolist() == pytest.approx([20 / 16 - 1, 22 / 16 - 1])


def test_shared_cell_equal_areas_first_box_wins():
    boxes = [[16, 16, 30, 30], [18, 18, 32, 32]]
    assignment = assign_targets([target(boxes, [2, 0])], SHAPES, STRIDES, IMAGE_SIZE, "center", 3)

    assert positive_cells(assignment) == [64 + 5]
    assert int(assignment.labels[0, 69]) == 2


def test_center3_neighbours_and_offsets():
    # A (level 1, cell (0, 0), offsets 0.5, 0.75): right neighbour (1, 0) = 65 because
    # 0.5 is not below one half, lower neighbour (0, 1) = 68.
    # B (level 2, cell (1, 1), offsets 0.40625, 0.4375): left neighbour (0, 1) = 82 and
    # upper neighbour (1, 0) = 81.
    boxes = [[4, 4, 12, 20], [30, 30, 60, 62]]
    assignment = assign_targets([target(boxes, [1, 2])], SHAPES, STRIDES, IMAGE_SIZE, "center3", 3)

    assert positive_cells(assignment) == [64, 65, 68, 81, 82, 83]
    assert assignment.labels[0, [64, 65, 68, 81, 82, 83]].tolist() == [1, 1, 1, 2, 2, 2]

    offsets = assignment.box_target[0, [64, 65, 68, 81, 82, 83], :2]
    expected = torch.tensor(
        [[0.5, 0.75], [-0.5, 0.75], [0.5, -0.25], [0.40625, 1.4375], [1.40625, 0.4375], [0.40625, 0.4375]]
    )
    torch.testing.assert_close(offsets, expected)
    # Every cell of a box learns the same size and the same weight.
    assert assignment.box_target[0, [64, 65, 68], 2].tolist() == pytest.approx([math.log(0.5)] * 3)
    assert assignment.box_weight[0, [81, 82, 83]].tolist() == pytest.approx([1.765625] * 3)


def test_center3_drops_neighbours_outside_grid():
    # Centre (3, 3) on level 0 lies in cell (0, 0) at offsets 0.375: its nearest
    # neighbours (-1, 0) and (0, -1) are outside the grid.
    assignment = assign_targets([target([[1, 1, 5, 5]], [0])], SHAPES, STRIDES, IMAGE_SIZE, "center3", 1)

    assert positive_cells(assignment) == [0]


def test_center3_centre_claim_beats_smaller_neighbour():
    # Big (16 x 16, centre (24, 24)) has centre cell (1, 1) = 69 on level 1.
    # Small (14 x 10, centre (34, 23)) has centre cell (2, 1) = 70 and offset x 0.125,
    # so its horizontal neighbour is (1, 1) = 69, which stays with the big box.
    boxes = [[16, 16, 32, 32], [27, 18, 41, 28]]
    assignment = assign_targets([target(boxes, [0, 1])], SHAPES, STRIDES, IMAGE_SIZE, "center3", 2)

    assert int(assignment.labels[0, 69]) == 0
    assert int(assignment.labels[0, 70]) == 1


def test_empty_image_is_negative():
    images = [target([], []), target([[4, 4, 12, 20]], [1])]
    assignment = assign_targets(images, SHAPES, STRIDES, IMAGE_SIZE, "center3", 3)

    assert assignment.positive.shape == (2, NUM_CELLS)
    assert not assignment.positive[0].any()
    assert not assignment.ignore[0].any()
    assert (assignment.labels[0] == -1).all()
    assert positive_cells(assignment, image=1) == [64, 65, 68]


def test_batch_without_boxes():
    assignment = assign_targets([target([], []), target([], [])], SHAPES, STRIDES, IMAGE_SIZE, "center", 3)

    assert assignment.num_positives == 0
    assert assignment.box_target.shape == (2, NUM_CELLS, 4)


def test_difficult_box_ignored_not_positive():
    # The difficult box claims cell 64; the ordinary one is on level 2.
    boxes = [[4, 4, 12, 20], [30, 30, 60, 62]]
    assignment = assign_targets(
        [target(boxes, [1, 2], difficult=[True, False])], SHAPES, STRIDES, IMAGE_SIZE, "center", 3
    )

    assert positive_cells(assignment) == [83]
    assert assignment.ignore[0].nonzero().flatten().tolist() == [64]


def test_difficult_box_does_not_override_positive():
    # The smaller box is difficult; the larger ordinary box keeps the shared cell 69.
    boxes = [[16, 16, 32, 32], [13, 17, 27, 27]]
    assignment = assign_targets(
        [target(boxes, [0, 1], difficult=[False, True])], SHAPES, STRIDES, IMAGE_SIZE, "center", 2
    )

    assert positive_cells(assignment) == [69]
    assert int(assignment.labels[0, 69]) == 0
    assert not assignment.ignore.any()


def test_degenerate_box_skipped():
    assignment = assign_targets([target([[4, 4, 4, 20]], [0])], SHAPES, STRIDES, IMAGE_SIZE, "center", 1)

    assert assignment.num_positives == 0


def test_centre_on_border_uses_last_cell():
    # Centre (64, 64) lies on the far border; it belongs to the last level-2 cell.
    assignment = assign_targets([target([[40, 40, 88, 88]], [0])], SHAPES, STRIDES, IMAGE_SIZE, "center", 1)

    assert positive_cells(assignment) == [83]


def test_single_level_takes_every_box():
    images = [target([[0, 0, 4, 4], [0, 0, 60, 60]], [0, 1])]
    assignment = assign_targets(images, [(2, 2)], (32,), IMAGE_SIZE, "center", 2)

    # Centres (2, 2) and (30, 30) are both in cell (0, 0); the smaller box wins.
    assert positive_cells(assignment) == [0]
    assert int(assignment.labels[0, 0]) == 0


def test_label_out_of_range_raises():
    with pytest.raises(ValueError, match="class label 3 is outside 0..2"):
        assign_targets([target([[4, 4, 12, 20]], [3])], SHAPES, STRIDES, IMAGE_SIZE, "center", 3)


def test_unknown_rule_raises():
    with pytest.raises(ValueError, match="assign rule 'nearest' is unknown"):
        assign_targets([target([], [])], SHAPES, STRIDES, IMAGE_SIZE, "nearest", 3)


def test_mismatched_lengths_raise():
    image = {"boxes": torch.zeros((2, 4)), "labels": torch.zeros(1, dtype=torch.int64)}
    with pytest.raises(ValueError, match="target 0 has 2 boxes, 1 labels"):
        assign_targets([image], SHAPES, STRIDES, IMAGE_SIZE, "center", 3)


def test_accepts_tv_tensor_boxes():
    from torchvision import tv_tensors

    boxes = tv_tensors.BoundingBoxes([[4, 4, 12, 20]], format="XYXY", canvas_size=(64, 64))
    image = {"boxes": boxes, "labels": torch.tensor([1])}
    assignment = assign_targets([image], SHAPES, STRIDES, IMAGE_SIZE, "center", 3)

    assert type(assignment.box_target) is torch.Tensor
    assert positive_cells(assignment) == [64]
