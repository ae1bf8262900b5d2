"""The source of the published numbers: the blog post this project regenerates.

The numbers themselves live in grids/*.yaml beside each row (mAP on the VOC2007 test
set, 11-point AP at IoU 0.5); this module names their source for the report.
"""

POST_TITLE = "Focal Loss及其改进"
POST_TITLE_ENGLISH = "Focal Loss and its improvements"
POST_AUTHOR = "lvsolo"
POST_DATE = "2024-10-24"
POST_CITATION = f"{POST_AUTHOR}, {POST_TITLE}, {POST_DATE}"
PIPELINE_CITATION = "lvsolo, companion post on the new-YOLOv1_PyTorch pipeline (same code base)"

REPORT_TITLE = f"{POST_TITLE} — {POST_TITLE_ENGLISH}"

# The row every table repeats: three-head FPN with the original YOLO losses, one shared run.
REFERENCE_ROW = "reference/fpn"

# The published recipe's test set; numbers from other data cannot be compared with the post.
PUBLISHED_TEST_SET = "Pascal VOC2007 test"

# The training schedule of the new-YOLOv1_PyTorch code base that the post trains with.
# The `voc` profile of yolonb.config sets the same values.
PUBLISHED_TRAINING = "416 pixels, 160 epochs, batch 32, SGD at lr 0.001, with multi-scale training"
