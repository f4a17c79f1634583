"""The class histogram of samples (pgm.mode_coverage) on known answers: the test set's own
images give the test set's histogram; copies of one class give that class alone, ratio 0."""

import warnings

import pytest
import torch

import pgm
from pgm.mode_coverage import (
    class_counts,
    class_coverage,
    class_histogram_figure,
    class_summary,
    confident_share,
)
from pgm.models import GAN
from pgm.sample_quality import feature_classifier, sample_quality


@pytest.fixture(scope="module")
def digits():
    return pgm.load_dataset("digits", binarize="none")


@pytest.fixture(scope="module")
def classifier(digits):
    return feature_classifier(digits)


def test_summary_of_known_counts():
    s = class_summary([5, 0, 10, 5])
    assert s["n"] == 20 and s["fractions"] == [0.25, 0.0, 0.5, 0.25]
    assert (s["rarest"], s["most_common"], s["ratio"], s["missing"]) == (1, 2, 0.0, [1])
    assert class_summary(torch.tensor([3, 3]))["ratio"] == 1.0
    with pytest.raises(ValueError, match="at least one"):
        class_summary([0, 0])


def test_test_images_give_the_test_histogram(digits, classifier):
    cov = class_coverage(digits.x_test, digits, classifier)
    assert cov["samples"] == cov["test"]
    assert cov["test"]["n"] == len(digits.x_test) and not cov["test"]["missing"]
    assert 0.3 < cov["test"]["ratio"] <= 1  # 180 images: small classes vary
    assert cov["classifier_accuracy"] > 0.85
    counts = class_counts(classifier, digits.x_test, digits.n_classes, chunk=7)  # chunked alike
    assert counts.tolist() == cov["test"]["counts"]
    # the share labelled with p >= 0.9: most test images (and no image with p >= 1 exactly)
    assert 0.5 < cov["test"]["confident"] <= 1
    p = classifier(digits.x_test).softmax(1).amax(1)
    assert cov["test"]["confident"] == pytest.approx((p >= 0.9).double().mean().item())
    assert confident_share(classifier, digits.x_test, chunk=7) == cov["test"]["confident"]
    grey = torch.full((5, digits.data_dim), float(digits.x_test.mean()))
    assert confident_share(classifier, grey, threshold=1.0) == 0.0
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        confident_share(classifier, grey[0])


def test_a_generator_of_one_class_has_ratio_zero(digits, classifier):
    x = digits.x_train
    threes = x[classifier(x).argmax(1) == 3]

    class OneClass(torch.nn.Module):  # a "generator" that copies images of one digit
        def sample(self, n):
            return threes[torch.randint(len(threes), (n,))]

    summary = sample_quality(OneClass(), digits, n=200, classifier=classifier,
                             n_classes_samples=1000)
    cov = summary["classes"]
    assert cov["samples"]["n"] == 1000 and cov["samples"]["counts"][3] == 1000
    assert cov["samples"]["fractions"][3] == 1.0 and cov["samples"]["ratio"] == 0.0
    assert cov["samples"]["most_common"] == 3 and len(cov["samples"]["missing"]) == 9
    assert cov["test"]["ratio"] > 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = class_histogram_figure(cov)
    assert "0.00" in fig.axes[0].get_legend().get_texts()[0].get_text()


def test_sample_quality_records_the_histogram_of_a_model(digits, tmp_path):
    torch.manual_seed(0)
    gan = GAN(data_dim=64, latent_dim=4, hidden=(16,), image_shape=(8, 8))
    summary = sample_quality(gan, digits, n=100, run_dir=tmp_path, n_classes_samples=500)
    assert summary["classes"]["samples"]["n"] == 500
    assert len(summary["classes"]["samples"]["counts"]) == digits.n_classes


def test_bad_input_is_one_line(digits, classifier):
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        class_counts(classifier, digits.x_test[0], 10)
    unlabelled = pgm.load_dataset("gauss1d")
    with pytest.raises(ValueError, match="no labels"):
        class_coverage(unlabelled.x_test, unlabelled, classifier)


def test_results_json_with_a_broken_histogram_stops_in_one_line(tmp_path):
    import json

    from pgm.errors import CheckpointError
    from pgm.schema import read_results

    path = tmp_path / "results.json"
    hist = class_summary([3, 1])
    good = {"estimators": {}, "sample_quality": {"classes": {"samples": hist, "test": hist}}}
    path.write_text(json.dumps(good))
    assert read_results(path)["sample_quality"]["classes"]["samples"]["ratio"] == 1 / 3
    good["sample_quality"]["classes"]["samples"]["ratio"] = "low"
    path.write_text(json.dumps(good))
    with pytest.raises(CheckpointError, match="'sample_quality.classes.samples.ratio' should be"):
        read_results(path)
