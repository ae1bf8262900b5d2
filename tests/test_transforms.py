"""Box-aware transforms, collate functions and multi-scale batching."""

import pickle

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from yolonb.data import MultiScaleCollate, collate_detection, eval_transform, sanitize_boxes, train_transform
from yolonb.data.transforms import RandomIoUCropIfBoxes, RandomRotation90


def make_sample(boxes, height=100, width=100, labels=None, difficult=None, image=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = boxes.shape[0]
    if image is None:
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": torch.arange(1, n + 1) if labels is None else torch.tensor(labels),
        "difficult": torch.zeros(n, dtype=torch.bool) if difficult is None else torch.tensor(difficult),
        "image_id": "000001",
        "orig_size": (height, width),
        "index": 0,
    }
    return tv_tensors.Image(image), target


def coordinate_image(height=100, width=100):
    """uint8 image whose channel 0 is the x and channel 1 the y of each pixel, to recover a crop's offset."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)]).to(torch.uint8)


def test_iou_crop_removes_box_with_label():
    boxes = [[5, 5, 15, 15], [80, 80, 95, 95], [40, 40, 60, 60]]
    labels = [1, 2, 3]
    difficult = [True, False, False]
    pipeline = v2.Compose([RandomIoUCropIfBoxes(), sanitize_boxes()])

    removals = 0
    for seed in range(40):
        torch.manual_seed(seed)
        image, target = pipeline(*make_sample(boxes, labels=labels, difficult=difficult, image=coordinate_image()))
        left, top = int(image[0, 0, 0]), int(image[1, 0, 0])
        height, width = image.shape[-2:]

        expected = []
        for box, label, flag in zip(boxes, labels, difficult):
            center_x, center_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            if left < center_x < left + width and top < center_y < top + height:
                shifted = [
                    min(max(box[0] - left, 0), width),
                    min(max(box[1] - top, 0), height),
                    min(max(box[2] - left, 0), width),
                    min(max(box[3] - top, 0), height),
                ]
                expected.append((shifted, label, flag))
        removals += len(expected) < len(boxes)

        assert target["boxes"].tolist() == [e[0] for e in expected]
        assert target["labels"].tolist() == [e[1] for e in expected]
        assert target["difficult"].tolist() == [e[2] for e in expected]
    assert removals > 0


def test_iou_crop_skips_negative_image():
    sample = make_sample([])
    image, target = RandomIoUCropIfBoxes()(*sample)
    assert image is sample[0]
    assert target["boxes"].shape == (0, 4)


@pytest.mark.parametrize(
    ("quarter_turns", "expected"),
    [(1, [5, 37, 12, 47]), (2, [37, 18, 47, 25]), (3, [18, 3, 25, 13])],
)
def test_rotation90_exact(quarter_turns, expected):
    # Box [3, 5, 13, 12] on a 50-wide, 30-high image; counter-clockwise by 90 degrees
    # maps (x, y) to (y, W - x), so it becomes [5, 50 - 13, 12, 50 - 3] = [5, 37, 12, 47].
    pixels = torch.zeros(3, 30, 50, dtype=torch.uint8)
    pixels[:, 5:12, 3:13] = 255
    image, target = make_sample([[3, 5, 13, 12]], height=30, width=50, image=pixels)

    rotate = RandomRotation90()
    out_image = rotate.transform(image, {"quarter_turns": quarter_turns})
    out_boxes = rotate.transform(target["boxes"], {"quarter_turns": quarter_turns})

    assert torch.equal(out_image, torch.rot90(pixels, quarter_turns, dims=(-2, -1)))
    assert out_boxes.tolist() == [expected]
    assert out_boxes.canvas_size == tuple(out_image.shape[-2:])
    x0, y0, x1, y1 = expected
    assert bool((out_image[0, y0:y1, x0:x1] == 255).all())
    assert int((out_image[0] == 255).sum()) == (x1 - x0) * (y1 - y0)


@pytest.mark.parametrize("augment", ["ssd", "shapes", "none"])
def test_train_transform_output(augment):
    boxes = [[2, 3, 30, 40], [60, 10, 99, 50], [10, 70, 12, 72], [45, 45, 55, 90]]
    pipeline = train_transform(64, augment)
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = pipeline(*make_sample(boxes, height=100, width=120, difficult=[False, True, False, True]))
        assert image.shape == (3, 64, 64)
        assert image.dtype == torch.float32
        assert image.min() >= 0.0
        assert image.max() <= 1.0
        n = target["boxes"].shape[0]
        assert target["labels"].shape == (n,)
        assert target["difficult"].shape == (n,)
        assert target["boxes"].canvas_size == (64, 64)
        if n:
            assert target["boxes"].min() >= 0
            assert target["boxes"].max() <= 64
            widths = target["boxes"][:, 2] - target["boxes"][:, 0]
            heights = target["boxes"][:, 3] - target["boxes"][:, 1]
            assert bool((widths >= 1).all())
            assert bool((heights >= 1).all())
        assert target["image_id"] == "000001"


@pytest.mark.parametrize("augment", ["ssd", "shapes"])
def test_train_transform_negative_image(augment):
    torch.manual_seed(0)
    image, target = train_transform(32, augment)(*make_sample([]))
    assert image.shape == (3, 32, 32)
    assert target["boxes"].shape == (0, 4)
    assert target["labels"].shape == (0,)


def test_resize_only_scales_boxes_exactly():
    image, target = train_transform(100, "none")(*make_sample([[20, 10, 60, 50]], height=100, width=200))
    assert image.shape == (3, 100, 100)
    assert target["boxes"].tolist() == [[10, 10, 30, 50]]


def test_eval_transform_deterministic_and_keeps_tiny_boxes():
    sample = make_sample([[20, 10, 60, 50], [0, 0, 1, 1]], height=100, width=200)
    first = eval_transform(50)(*sample)
    second = eval_transform(50)(*sample)
    assert torch.equal(first[0], second[0])
    assert first[1]["boxes"].tolist() == [[5, 5, 15, 25], [0, 0, 0.25, 0.5]]
    assert first[1]["labels"].tolist() == [1, 2]


def test_unknown_augmentation():
    with pytest.raises(ValueError, match=r"unknown augmentation 'mosaic': expected one of ssd, shapes, none"):
        train_transform(64, "mosaic")


def test_collate_detection_stacks():
    batch = [eval_transform(16)(*make_sample([[1, 1, 5, 5]])), eval_transform(16)(*make_sample([]))]
    images, targets = collate_detection(batch)
    assert images.shape == (2, 3, 16, 16)
    assert type(images) is torch.Tensor
    assert [t["boxes"].shape[0] for t in targets] == [1, 0]


def test_collate_detection_rejects_mixed_sizes():
    batch = [eval_transform(16)(*make_sample([])), eval_transform(32)(*make_sample([]))]
    with pytest.raises(ValueError, match="cannot batch images of different sizes"):
        collate_detection(batch)


def test_multiscale_collate_seeded():
    sizes = (32, 48, 64)
    batch = [eval_transform(64)(*make_sample([[0, 0, 64, 32]], height=64, width=64)) for _ in range(2)]

    first = MultiScaleCollate(sizes, seed=3)
    second = MultiScaleCollate(sizes, seed=3)
    drawn = []
    for _ in range(20):
        images, targets = first(batch)
        size = images.shape[-1]
        assert images.shape == (2, 3, size, size)
        assert second(batch)[0].shape[-1] == size
        assert targets[0]["boxes"].tolist() == [[0, 0, size, size / 2]]
        drawn.append(size)
    assert set(drawn) == set(sizes)


def test_multiscale_collate_rejects_bad_sizes():
    with pytest.raises(ValueError, match="invalid sizes"):
        MultiScaleCollate([])


@pytest.mark.parametrize("augment", ["ssd", "shapes", "none"])
def test_pipeline_survives_pickle(augment):
    # DataLoader workers receive the transform and collate function by pickling.
    pipeline = pickle.loads(pickle.dumps(train_transform(32, augment)))
    collate = pickle.loads(pickle.dumps(MultiScaleCollate((16, 32), seed=1)))
    torch.manual_seed(0)
    images, targets = collate([pipeline(*make_sample([[10, 10, 60, 60]]))])
    assert images.shape[-1] in (16, 32)
    assert targets[0]["labels"].shape == targets[0]["difficult"].shape
