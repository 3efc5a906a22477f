"""Metrics against values computed by hand."""

import numpy as np
import pytest

from musictag.learn.metrics import accuracy, average_precision, macro_f1, multi_label_report, roc_auc


def test_roc_auc_by_hand():
    # positives 0.8, 0.4; negatives 0.6, 0.2 -> pairs (0.8>0.6, 0.8>0.2, 0.4<0.6, 0.4>0.2) = 3/4
    assert roc_auc([1, 0, 1, 0], [0.8, 0.6, 0.4, 0.2]) == pytest.approx(0.75)
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half


def test_average_precision_by_hand():
    # ranking: 0.9(+), 0.8(-), 0.7(+), 0.1(-): precision at the positives 1/1 and 2/3 -> (1 + 2/3)/2
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0, 1], [0.9, 0.1]) == pytest.approx(0.5)
    # tied scores form one threshold: both at 0.5, one positive -> precision 1/2 at recall 1
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


def test_f1_and_accuracy_by_hand():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 fn1 -> 0
    assert macro_f1(y_true, y_pred, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert accuracy(y_true, y_pred) == pytest.approx(0.6)


def test_multi_label_report_skips_labels_without_both_classes():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]], np.float32)
    p = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.5], [0.8, 0.2, 0.5], [0.1, 0.9, 0.5]])
    report = multi_label_report(y, p, ["a", "b", "c"])
    assert report["labels_scored"] == 1 and list(report["per_label"]) == ["a"]
    assert report["roc_auc"] == pytest.approx(1.0) and report["pr_auc"] == pytest.approx(1.0)
