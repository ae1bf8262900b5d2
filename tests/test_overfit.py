"""Each neck, trained with the original losses, fits four synthetic images almost perfectly.

A detector that cannot memorise four images has a bug in its assignment, loss or
decoding, whatever its test-set mAP. Each neck takes 1 to 3 minutes on a 2-core CPU,
so the test is slow.
"""

import pytest
import torch

from yolonb.data import DetectionDataset, collate_detection, eval_transform, load_voc
from yolonb.data.synthetic import generate
from yolonb.eval import evaluate_detections
from yolonb.losses.detection import LossSpec, detection_loss
from yolonb.models import build_detector
from yolonb.models.postprocess import postprocess

STEPS = 300
# The single-head model predicts on a stride-32 grid only, so at 128 pixels (4 x 4
# cells) several of the objects share a cell and only one per cell can be assigned.
IMAGE_SIZES = {"single": 256, "fpn": 128, "bifpn": 128, "augfpn": 128}


@pytest.fixture(scope="module")
def four_images(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("overfit"), n_trainval=4, n_test=1, seed=5,
                    objects_per_image=(2, 4), distractors_per_image=(0, 0))
    return load_voc(root, ["trainval"])


@pytest.mark.slow
@pytest.mark.parametrize("neck", ["single", "fpn", "bifpn", "augfpn"])
def test_neck_overfits_four_images(neck, four_images):
    split = four_images
    image_size = IMAGE_SIZES[neck]
    dataset = DetectionDataset(split.records, eval_transform(image_size))
    images, targets = collate_detection([dataset[i] for i in range(4)])
    torch.manual_seed(0)
    model = build_detector(len(split.classes), neck=neck, pretrained=False)
    # The original losses: softmax cross-entropy, MSE objectness, the YOLO box terms
    # and the centre-cell assignment.
    spec = LossSpec(assign_rule="center")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)

    model.train()
    for _ in range(STEPS):
        losses = detection_loss(model(images), targets, spec, image_size)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        detections = postprocess(model(images), spec, image_size, conf_threshold=0.05)
    det_image = torch.cat([torch.full((len(d["scores"]),), i) for i, d in enumerate(detections)])
    result = evaluate_detections(
        det_image,
        torch.cat([d["labels"] for d in detections]),
        torch.cat([d["scores"] for d in detections]),
        torch.cat([d["boxes"] for d in detections]),
        torch.cat([torch.full((len(t["labels"]),), i) for i, t in enumerate(targets)]),
        torch.cat([t["labels"] for t in targets]),
        torch.cat([t["boxes"].as_subclass(torch.Tensor) for t in targets]),
        torch.cat([t["difficult"] for t in targets]),
        split.classes,
    )

    assert result.map_voc07 >= 0.9, result.to_dict()["per_class_ap"]
