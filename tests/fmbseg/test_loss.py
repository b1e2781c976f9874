"""TSupCon (Eqs. 1-4) and its Table-3 variants against plain loop implementations."""

import math

import pytest
import torch

from backend.fmbseg.loss import (
    LossSettings,
    alignment_loss,
    prototype_loss,
    supcon_loss,
    tsupcon_loss,
)

# ---------------------------------------------------------------------------------------------
# Reference implementations: one Python loop per sum of the paper's equations, scalar by scalar.
# ---------------------------------------------------------------------------------------------


def _unit(vector):
    return vector / vector.norm()


def _reference_parts(z, y, t, tau, include_self, ignore=-1):
    """Returns (sum_k l_t(t_k), #present classes, sum_i l_im(z_i), #patches with a term)."""
    keep = [i for i in range(len(y)) if int(y[i]) != ignore]
    zs = [_unit(z[i]) for i in keep]
    ys = [int(y[i]) for i in keep]
    ts = [_unit(t[k]) for k in range(t.shape[0])]
    n = len(zs)

    def sim(a, b):
        return torch.dot(a, b) / tau

    text_sum = torch.zeros((), dtype=z.dtype)
    present = 0
    for k in range(len(ts)):  # Eq. 2
        members = [i for i in range(n) if ys[i] == k]
        if not members:
            continue
        present += 1
        class_total = torch.zeros((), dtype=z.dtype)
        for i in members:  # Eq. 3
            denominator = torch.zeros((), dtype=z.dtype)
            for k2 in range(len(ts)):
                denominator = denominator + torch.exp(sim(zs[i], ts[k2]))
            for j in range(n):
                if j != i:
                    denominator = denominator + torch.exp(sim(zs[i], zs[j]))
            class_total = class_total - sim(zs[i], ts[k]) + torch.log(denominator)
        text_sum = text_sum + class_total / len(members)

    image_sum = torch.zeros((), dtype=z.dtype)
    image_count = 0
    for i in range(n):  # Eq. 4
        positives = [l for l in range(n) if ys[l] == ys[i] and (include_self or l != i)]
        if not positives or n < 2:
            continue
        log_partition = torch.log(sum(torch.exp(sim(zs[i], zs[j])) for j in range(n) if j != i))
        term = torch.zeros((), dtype=z.dtype)
        for l in positives:
            term = term + (-sim(zs[i], zs[l]) + log_partition)
        image_sum = image_sum + term / len(positives)
        image_count += 1
    return text_sum, present, image_sum, image_count


def reference_tsupcon(z, y, t, tau=1.0, include_self=False):
    # Eq. 1: 1/(B*N + K) (sum_k l_t(t_k) + sum_i l_im(z_i))
    text_sum, present, image_sum, image_count = _reference_parts(z, y, t, tau, include_self)
    return (text_sum + image_sum) / (present + image_count)


def reference_prototype(z, y, t, tau=1.0):
    text_sum, present, _, _ = _reference_parts(z, y, t, tau, False)
    return text_sum / present


def reference_supcon(z, y, t, tau=1.0):
    """SupCon [20] L_out over patches and text features together, every sample an anchor."""
    samples = [_unit(z[i]) for i in range(len(y)) if int(y[i]) != -1]
    labels = [int(v) for v in y if int(v) != -1]
    samples += [_unit(t[k]) for k in range(t.shape[0])]
    labels += list(range(t.shape[0]))
    total = torch.zeros((), dtype=z.dtype)
    anchors = 0
    for a in range(len(samples)):
        positives = [p for p in range(len(samples)) if p != a and labels[p] == labels[a]]
        if not positives:
            continue
        denominator = sum(torch.exp(torch.dot(samples[a], samples[j]) / tau) for j in range(len(samples)) if j != a)
        term = sum(-torch.log(torch.exp(torch.dot(samples[a], samples[p]) / tau) / denominator) for p in positives)
        total = total + term / len(positives)
        anchors += 1
    return total / anchors


def _random_batch(seed, num_patches=14, num_classes=5, dim=6, ignored=3, absent_class=True):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(num_patches, dim, generator=generator, dtype=torch.float64)
    t = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    high = num_classes - 1 if absent_class else num_classes  # the last class never appears
    y = torch.randint(0, high, (num_patches,), generator=generator)
    y[:ignored] = -1
    y[ignored] = 0  # class 0 appears at least twice, and one class once (below)
    y[ignored + 1] = 0
    if high > 1:
        y[-1] = 1
        y[:-1][y[:-1] == 1] = 2 % high  # class 1 is a singleton
    return z, y, t


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau", [1.0, 0.3])
@pytest.mark.parametrize("include_self", [False, True])
def test_tsupcon_matches_reference_values_and_gradients(seed, tau, include_self):
    z, y, t = _random_batch(seed)
    z_ref = z.clone().requires_grad_(True)
    z_vec = z.clone().requires_grad_(True)
    expected = reference_tsupcon(z_ref, y, t, tau, include_self)
    actual = tsupcon_loss(z_vec, y, t, temperature=tau, include_self_positive=include_self)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    expected.backward()
    actual.backward()
    torch.testing.assert_close(z_vec.grad, z_ref.grad, rtol=1e-9, atol=1e-10)
    assert z_vec.grad[:3].abs().max() == 0  # ignored patches get no gradient


@pytest.mark.parametrize("seed", [0, 4])
def test_balanced_terms_match_reference(seed):
    """Ours, not the paper's: mean text term + mean patch term instead of one mean over both."""
    z, y, t = _random_batch(seed)
    z_ref = z.clone().requires_grad_(True)
    z_vec = z.clone().requires_grad_(True)
    text_sum, present, image_sum, image_count = _reference_parts(z_ref, y, t, 0.7, False)
    expected = text_sum / present + image_sum / image_count
    actual = tsupcon_loss(z_vec, y, t, temperature=0.7, balance_terms=True)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    expected.backward()
    actual.backward()
    torch.testing.assert_close(z_vec.grad, z_ref.grad, rtol=1e-9, atol=1e-10)
    settings = LossSettings(balance_terms=True, temperature=0.7)
    torch.testing.assert_close(alignment_loss(z, y, t, settings), actual.detach())


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_variants_match_reference_values_and_gradients(seed, tau):
    z, y, t = _random_batch(seed, num_patches=11, num_classes=4)
    for vectorised, reference in [(prototype_loss, reference_prototype), (supcon_loss, reference_supcon)]:
        z_ref = z.clone().requires_grad_(True)
        z_vec = z.clone().requires_grad_(True)
        expected = reference(z_ref, y, t, tau)
        actual = vectorised(z_vec, y, t, temperature=tau)
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
        expected.backward()
        actual.backward()
        torch.testing.assert_close(z_vec.grad, z_ref.grad, rtol=1e-9, atol=1e-10)


def test_hand_worked_two_patch_case():
    # Two patches of class 0, orthogonal; texts t_0 = z_0, t_1 = z_1 (unit vectors e1, e2).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    # Eq. 3 for z_0: -1 + log(e^1 + e^0 + e^0); for z_1: -0 + log(e^0 + e^1 + e^0)
    l_t = ((-1 + math.log(math.e + 2)) + math.log(math.e + 2)) / 2
    # Eq. 4, l != i: each patch has one positive at similarity 0 and log-partition log(e^0) = 0
    l_im = 0.0 + 0.0
    expected = (l_t + l_im) / (1 + 2)
    assert tsupcon_loss(z, y, t).item() == pytest.approx(expected, abs=1e-12)
    # literal Eq. 4 (l = i included): each term becomes ((-1 + 0) + (0 + 0)) / 2 = -0.5
    expected_literal = (l_t - 1.0) / 3
    assert tsupcon_loss(z, y, t, include_self_positive=True).item() == pytest.approx(expected_literal, abs=1e-12)


def test_unit_normalisation_and_dispatch():
    z, y, t = _random_batch(5)
    scaled = tsupcon_loss(3.0 * z, y, 0.5 * t)
    torch.testing.assert_close(scaled, tsupcon_loss(z, y, t))
    for variant, function in [("tsupcon", tsupcon_loss), ("supcon", supcon_loss), ("prototype", prototype_loss)]:
        got = alignment_loss(z, y, t, LossSettings(variant=variant, temperature=0.7))
        torch.testing.assert_close(got, function(z, y, t, temperature=0.7))


def test_all_ignored_gives_zero_with_graph():
    z = torch.randn(4, 3, requires_grad=True)
    loss = tsupcon_loss(z, torch.full((4,), -1), torch.randn(2, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(z.grad) == 0


def test_single_labelled_patch_is_finite():
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([-1, 1, -1])
    t = torch.randn(3, 4, dtype=torch.float64)
    loss = tsupcon_loss(z, y, t)
    expected = reference_tsupcon(z.detach(), y, t)
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(labels=torch.tensor([0, 5])), "labels must lie in"),
        (dict(labels=torch.tensor([0.0, 1.0])), "integer"),
        (dict(labels=torch.tensor([0, 1, 1])), "labels must be"),
        (dict(text=torch.randn(3, 5)), "text_embeddings"),
    ],
)
def test_bad_input_is_rejected(kwargs, message):
    z = torch.randn(2, 4)
    labels = kwargs.get("labels", torch.tensor([0, 1]))
    text = kwargs.get("text", torch.randn(3, 4))
    with pytest.raises(ValueError, match=message):
        tsupcon_loss(z, labels, text)


def test_settings_validation():
    with pytest.raises(ValueError, match="variant"):
        LossSettings(variant="clip")
    with pytest.raises(ValueError, match="temperature"):
        LossSettings(temperature=0.0)
