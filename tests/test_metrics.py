"""Each metric against a hand-computed case."""
import math

import numpy as np
import torch

from toolchain.train.metrics import ClassificationMetric, CountingMetric, SegmentationMetric


def test_segmentation_metric_hand_computed():
    # 3 classes, ignore 255. target / prediction over 6 pixels (one void).
    target = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    m = SegmentationMetric(3, 255, ["a", "b", "c"])
    m.update(pred, target)
    r = m.compute()
    # class 0: tp 1, fp 1 (pixel 4), fn 1 (pixel 1) -> 1/3 ; class 1: tp 2, fp 1 -> 2/3 ; class 2: tp 0, fn 1 -> 0
    assert math.isclose(r["per_class_iou"]["a"], 100 / 3, rel_tol=1e-5)
    assert math.isclose(r["per_class_iou"]["b"], 200 / 3, rel_tol=1e-5)
    assert r["per_class_iou"]["c"] == 0
    assert math.isclose(r["miou"], 100 / 3, rel_tol=1e-5)
    assert math.isclose(r["pixel_acc"], 60.0, rel_tol=1e-6)  # 3 of 5 valid pixels


def test_segmentation_metric_logits_and_absent_class():
    m = SegmentationMetric(3, 255)
    logits = np.zeros((1, 3, 1, 2), np.float32)
    logits[0, 0, 0, 0] = 1  # pixel 0 -> class 0
    logits[0, 1, 0, 1] = 1  # pixel 1 -> class 1
    m.update(logits, torch.tensor([[[0, 1]]]))
    r = m.compute()
    assert r["per_class_iou"]["2"] is None  # absent everywhere: not counted
    assert r["miou"] == 100.0


def test_segmentation_metric_state_is_additive():
    a, b, both = SegmentationMetric(2, 255), SegmentationMetric(2, 255), SegmentationMetric(2, 255)
    t1, p1 = torch.tensor([[0, 1]]), torch.tensor([[0, 0]])
    t2, p2 = torch.tensor([[1, 1]]), torch.tensor([[1, 0]])
    a.update(p1, t1); b.update(p2, t2); both.update(p1, t1); both.update(p2, t2)
    a.load_state(a.state() + b.state())
    assert a.compute()["miou"] == both.compute()["miou"]


def test_counting_metric_hand_computed():
    m = CountingMetric()
    pred = torch.zeros(2, 1, 2, 2)
    pred[0] += 1.0   # count 4
    pred[1] += 2.5   # count 10
    target = torch.zeros(2, 1, 2, 2)
    target[0, 0, 0, 0] = 6  # count 6 -> err -2
    target[1, 0, 1, 1] = 7  # count 7 -> err 3
    r = m.compute() if False else (m.update(pred, target) or m.compute())
    assert math.isclose(r["mae"], 2.5)
    assert math.isclose(r["rmse"], math.sqrt((4 + 9) / 2))


def test_classification_metric_hand_computed():
    m = ClassificationMetric()
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [0.0, 1.0]])
    m.update(logits, torch.tensor([0, 1, 1, 1]))
    assert m.compute()["top1"] == 75.0
