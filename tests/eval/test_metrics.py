"""clipx.metrics on hand-made maps and masks, and deletion / insertion with a synthetic score function."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipx.eval.metrics import (Curve, auc, average_precision, baseline_image, caption_logit, centre_prior, deletion_curve,
                           discrimination, energy_pointing_game, insertion_curve, localisation, pointing_game)
from floats import assert_float32_close


def box(y0: int, y1: int, x0: int, x1: int, size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def peak(y: int, x: int, size: int = 64) -> torch.Tensor:
    s = torch.zeros(size, size)
    s[y, x] = 1.0
    return s


MASK = box(20, 30, 20, 30)


# --- localisation --------------------------------------------------------------------------------

def test_map_equal_to_mask_scores_one():
    for s in (MASK.astype(float), torch.from_numpy(MASK).float(), torch.from_numpy(MASK)):
        assert pointing_game(s, MASK)
        assert energy_pointing_game(s, MASK) == 1.0


def test_uniform_map_scores_area_fraction():
    assert energy_pointing_game(np.ones((64, 64)), MASK) == pytest.approx(MASK.mean())
    assert energy_pointing_game(torch.full((8, 8), 3.0), MASK) == pytest.approx(MASK.mean())


def test_energy_ignores_negative_values_and_zero_map_scores_zero():
    s = torch.from_numpy(MASK).double() - 0.5  # +0.5 inside, -0.5 outside
    assert energy_pointing_game(s, MASK) == 1.0
    assert energy_pointing_game(torch.zeros(64, 64), MASK) == 0.0


def test_pointing_tolerance():
    # the mask spans columns 20..29; tolerance 0.05 * 64 = 3.2 pixels
    assert pointing_game(peak(25, 32), MASK)  # 3 pixels outside: a hit
    assert not pointing_game(peak(25, 32), MASK, tolerance=0.0)
    assert not pointing_game(peak(25, 34), MASK)  # 5 pixels outside: a miss
    assert not pointing_game(peak(60, 60), MASK)
    assert pointing_game(peak(33, 33), MASK, tolerance=0.1)  # diagonal, euclidean 4.2 < 6.4
    assert not pointing_game(peak(33, 33), MASK, tolerance=0.06)  # 4.2 > 3.84


def test_pointing_ties_take_first_argmax():
    s = torch.zeros(64, 64)
    s[25, 25] = s[60, 60] = 1.0
    assert pointing_game(s, MASK)  # (25, 25) comes first in raster order
    s[5, 5] = 1.0
    assert not pointing_game(s, MASK)


def test_low_resolution_map_is_upsampled_onto_the_mask():
    patch = box(16, 24, 40, 48)  # patch (2, 5) of an 8x8 grid over 64x64 pixels
    s = torch.zeros(8, 8)
    s[2, 5] = 1.0
    assert pointing_game(s, patch, tolerance=0.0)
    assert not pointing_game(s, box(16, 24, 32, 40), tolerance=0.0)  # the neighbouring patch
    # bilinear spreads the peak over its neighbours, but most energy stays on the patch
    assert 0.5 < energy_pointing_game(s, patch) < 1.0
    # a grid that does not divide the image still lands on the right region
    s7 = torch.zeros(7, 7)
    s7[1, 5] = 1.0  # centre at pixel ((1.5 / 7) * 64, (5.5 / 7) * 64) = (13.7, 50.3)
    assert pointing_game(s7, box(10, 18, 46, 55), tolerance=0.0)


def test_discrimination():
    target, other = box(5, 20, 5, 20), box(40, 60, 40, 60)
    assert discrimination(target.astype(float), target, other) == 1.0
    assert discrimination(other.astype(float), target, other) == 0.0
    assert discrimination((target | other).astype(float) * 2.0, box(5, 20, 5, 20), box(45, 60, 45, 60)) == 0.5
    assert discrimination(np.ones((64, 64)), target, box(40, 55, 40, 55)) == 0.5  # equal areas
    assert discrimination(box(0, 3, 0, 3).astype(float), target, other) == 0.5  # energy on neither


def test_localisation_collects_the_scores():
    target, other = box(5, 20, 5, 20), box(40, 60, 40, 60)
    assert localisation(target.astype(float), target) == {"pointing": 1.0, "energy": 1.0}
    assert localisation(other.astype(float), target, other) == {"pointing": 0.0, "energy": 0.0, "discrimination": 0.0}


@pytest.mark.parametrize("metric", [pointing_game, energy_pointing_game])
def test_bad_localisation_inputs(metric):
    with pytest.raises(ValueError, match="empty"):
        metric(np.ones((64, 64)), np.zeros((64, 64), dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        metric(torch.full((8, 8), float("nan")), MASK)
    with pytest.raises(ValueError, match="aspect"):
        metric(np.ones((8, 4)), MASK)
    with pytest.raises(ValueError, match="2-d"):
        metric(np.ones((1, 8, 8)), MASK)
    with pytest.raises(ValueError, match="boolean"):
        metric(np.ones((64, 64)), MASK * 0.5)


def test_bad_discrimination_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        discrimination(np.ones((64, 64)), MASK, box(0, 5, 0, 5, size=32))
    with pytest.raises(ValueError, match="other_mask is empty"):
        discrimination(np.ones((64, 64)), MASK, np.zeros((64, 64), dtype=bool))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(np.ones((64, 64)), MASK, tolerance=-0.1)


# --- deletion / insertion ------------------------------------------------------------------------

HIDDEN = torch.from_numpy(box(8, 24, 8, 24, size=32))
# a bright object on a dim noisy background: blur and mean both lower the score
IMAGE = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.2 + HIDDEN * 1.0


def score_inside(px: torch.Tensor) -> torch.Tensor:
    """A synthetic model that only looks at the hidden object's pixels."""
    return px[:, :, HIDDEN].mean(dim=(1, 2))


def test_perfect_ordering_beats_reversed():
    good, bad = HIDDEN.float(), 1.0 - HIDDEN.float()
    for baseline in ("blur", "mean", torch.zeros(3, 32, 32)):
        d_good, d_bad = (deletion_curve(score_inside, IMAGE, s, steps=16, baseline=baseline) for s in (good, bad))
        i_good, i_bad = (insertion_curve(score_inside, IMAGE, s, steps=16, baseline=baseline) for s in (good, bad))
        assert d_good.auc < d_bad.auc
        assert i_good.auc > i_bad.auc


def test_curves_start_and_end_at_image_and_baseline():
    s = torch.rand(4, 4, generator=torch.Generator().manual_seed(1))
    for name in ("blur", "mean"):
        full = score_inside(IMAGE[None]).item()
        empty = score_inside(baseline_image(IMAGE, name)).item()
        d = deletion_curve(score_inside, IMAGE, s, steps=10, baseline=name)
        i = insertion_curve(score_inside, IMAGE, s, steps=10, baseline=name)
        assert isinstance(d, Curve) and d.kind == "deletion" and d.baseline == name and i.baseline == name
        assert d.fractions[0] == 0 and d.fractions[-1] == 1 and len(d.fractions) == len(d.scores) == 11
        assert d.scores[0].item() == pytest.approx(full) and d.scores[-1].item() == pytest.approx(empty)
        assert i.scores[0].item() == pytest.approx(empty) and i.scores[-1].item() == pytest.approx(full)
        assert empty < full  # the baseline really removes information
    fractions, scores = d  # unpacks as a (fractions, scores) pair
    assert repr(d) == (f"Curve(deletion, 11 steps, AUC {d.auc:.4g}, mean baseline; "
                       f"score {d.scores[0].item():.4g} -> {d.scores[-1].item():.4g})")
    assert d.auc == auc(fractions, scores)
    assert deletion_curve(score_inside, IMAGE, s, baseline=torch.zeros(1, 3, 32, 32)).baseline == "tensor"


def test_blur_and_mean_baselines():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 15:17, 15:17] = 1.0
    blurred = baseline_image(x, "blur")
    assert blurred.shape == x.shape and blurred.max() < 0.1  # a strong blur spreads a dot away
    assert blurred.sum().item() == pytest.approx(x.sum().item(), rel=1e-4)  # far from the edges, mass is kept
    assert torch.allclose(baseline_image(torch.full((3, 16, 16), 0.3), "blur"), torch.full((1, 3, 16, 16), 0.3))
    assert torch.allclose(baseline_image(IMAGE, "mean")[0, :, 0, 0], IMAGE.mean(dim=(1, 2)))


def test_batched_equals_one_at_a_time():
    s = torch.rand(8, 8, generator=torch.Generator().manual_seed(2))
    w = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(3))

    def score_fn(px):
        return torch.tanh((px * w).sum(dim=(1, 2, 3)) / 100)

    for curve in (deletion_curve, insertion_curve):
        one = curve(score_fn, IMAGE, s, steps=12, batch_size=1)
        many = curve(score_fn, IMAGE, s, steps=12, batch_size=5)
        assert_float32_close(one.scores, many.scores)
        assert torch.equal(one.fractions, many.fractions)


def test_pixels_removed_follow_the_upsampled_patch_order():
    # a 2x2 map on 32x32 pixels: the hot patch (top left) goes first, a quarter of the image
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    zeros = torch.zeros(3, 32, 32)
    top_left = deletion_curve(lambda px: px[:, :, :16, :16].mean(dim=(1, 2, 3)), IMAGE, s, steps=4, baseline=zeros)
    assert top_left.scores[0] > 0 and (top_left.scores[1:] == 0).all()
    rest = deletion_curve(lambda px: px[:, :, 16:, :].mean(dim=(1, 2, 3)), IMAGE, s, steps=4, baseline=zeros)
    assert rest.scores[1] == rest.scores[0] > 0


def test_bad_curve_inputs():
    s = torch.rand(4, 4)
    with pytest.raises(ValueError, match="does not match"):
        deletion_curve(score_inside, IMAGE, s, baseline=torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="baseline must be"):
        deletion_curve(score_inside, IMAGE, s, baseline="zeros")
    with pytest.raises(ValueError, match="NaN"):
        insertion_curve(score_inside, IMAGE, torch.full((4, 4), float("nan")))
    with pytest.raises(ValueError, match="aspect"):
        insertion_curve(score_inside, IMAGE, torch.rand(4, 2))
    with pytest.raises(ValueError, match="one image"):
        deletion_curve(score_inside, IMAGE.expand(2, 3, 32, 32), s)
    with pytest.raises(ValueError, match="one score per image"):
        deletion_curve(lambda px: px.mean(dim=1), IMAGE, s)
    with pytest.raises(ValueError, match="steps"):
        deletion_curve(score_inside, IMAGE, s, steps=0)
    with pytest.raises(ValueError, match="same length"):
        auc([0.0, 1.0], [1.0])


def test_centre_prior_peaks_in_the_middle():
    prior = centre_prior((7, 9))
    assert prior.shape == (7, 9) and prior[3, 4] == 1 == prior.max()
    assert torch.equal(prior, prior.flip(0)) and torch.equal(prior, prior.flip(1))
    assert prior[0, 0] < prior[3, 0] < prior[3, 4]
    assert pointing_game(centre_prior((8, 8)), box(28, 36, 28, 36)) and not pointing_game(centre_prior((8, 8)), box(0, 8, 0, 8))


def test_caption_logit_scores_each_image_of_a_batch(tiny_model):
    from PIL import Image

    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "white")]
    pixel_values = tiny_model.preprocess(images)
    tok = tiny_model.tokenize(["a red square", "a blue sky"])
    with torch.no_grad():
        expected = tiny_model(pixel_values=pixel_values, input_ids=tok.input_ids,
                              attention_mask=tok.attention_mask).logits_per_image[:, 1]
        got = caption_logit(tiny_model, "a blue sky")(pixel_values)
    assert_float32_close(got, expected)  # one caption against two: other padding, other kernels


# --- ranking -------------------------------------------------------------------------------------

def brute_force_ap(scores: list[float], labels: list[bool]) -> float:
    """The definition, one positive at a time: the precision among everything scored at least as high."""
    precisions = [sum(lab for t, lab in zip(scores, labels) if t >= s) / sum(t >= s for t in scores)
                  for s, label in zip(scores, labels) if label]
    return sum(precisions) / len(precisions)


def test_average_precision_against_hand_computed_values():
    # positives at ranks 1, 3, 5: precisions 1, 2/3, 3/5
    assert average_precision([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 1]) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # the two 0.5s cross the threshold together: the tied positive gets precision 2/3, not 1
    assert average_precision([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 1]) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert average_precision([0.5, 0.5, 0.5, 0.5], [1, 0, 0, 0]) == 0.25  # all tied: the positives' share
    assert average_precision([3.0, 2.0, 1.0], [1, 1, 0]) == 1.0 and average_precision([1.0, 2.0], [1, 0]) == 0.5


def test_average_precision_matches_the_definition_on_random_rankings_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(2, 40, (1,), generator=g))
        scores = torch.randint(0, 6, (n,), generator=g).double()  # few values: many ties
        labels = torch.rand(n, generator=g) < 0.4
        labels[0] = True
        expected = brute_force_ap(scores.tolist(), labels.tolist())
        assert average_precision(scores, labels) == pytest.approx(expected, abs=1e-12)
        assert average_precision(scores.numpy().reshape(1, -1), labels.numpy()) == pytest.approx(expected, abs=1e-12)


def test_bad_average_precision_inputs():
    with pytest.raises(ValueError, match="at least one positive"):
        average_precision([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="as many values"):
        average_precision([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="NaN"):
        average_precision([0.1, float("nan")], [1, 0])
