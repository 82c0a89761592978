import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from llmjepa import metrics as M


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- collapse metrics ---------------------------------------------------------------


def test_rankme_gaussian_is_near_full_rank():
    Z = torch.randn(5000, 100, generator=gen())
    assert M.rankme(Z) > 99.5
    assert M.effective_rank(Z) > 99.5


def test_rankme_low_rank_product():
    g = gen(1)
    Z = torch.randn(2000, 10, generator=g) @ torch.randn(10, 64, generator=g)
    assert M.rankme(Z) == pytest.approx(9.78, abs=0.3)


def test_rankme_balanced_one_hot_is_number_of_classes():
    Z = F.one_hot(torch.arange(1000) % 10, 10).float()
    assert M.rankme(Z) == pytest.approx(10.0, abs=0.01)


def test_offset_drops_rankme_but_not_centred_rank():
    Z = torch.randn(2000, 64, generator=gen(2)) + 10.0
    assert M.rankme(Z) == pytest.approx(12.2, abs=1.0)
    assert M.effective_rank(Z) > 60


def test_ln_std_of_identical_rows_is_zero():
    Z = torch.randn(1, 32, generator=gen(3)).repeat(50, 1)
    s = M.ln_std(Z)
    assert s["mean"] == pytest.approx(0.0, abs=1e-6)
    assert s["min"] == pytest.approx(0.0, abs=1e-6)
    assert s["frac_below_0.01"] == 1.0


def test_ln_std_of_gaussian_is_near_one():
    s = M.ln_std(torch.randn(4000, 64, generator=gen(4)))
    assert s["mean"] == pytest.approx(1.0, abs=0.05)
    assert s["frac_below_0.01"] == 0.0


def test_feature_rms():
    assert M.feature_rms(torch.full((3, 4), -2.0)) == pytest.approx(2.0)


def test_mean_cosine():
    row = torch.randn(1, 16, generator=gen(5))
    assert M.mean_cosine(row.repeat(10, 1)) == pytest.approx(1.0)
    assert M.mean_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)
    n = 20
    Z = torch.randn(n, 5000, generator=gen(6))
    assert M.mean_cosine(Z, centred=True) == pytest.approx(-1 / (n - 1), abs=0.005)
    assert abs(M.mean_cosine(Z)) < 0.01


def test_mean_cosine_guards_zero_rows():
    Z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    # Pairs: (0,1) -> 1, the two pairs with the zero row -> 0.
    assert M.mean_cosine(Z) == pytest.approx(1 / 3)


def test_collapse_metrics_bundle_accepts_patch_tokens():
    Z = torch.randn(40, 8, 16, generator=gen(7))
    m = M.collapse_metrics(Z)
    assert set(m) == {
        "rankme", "erank", "ln_std_mean", "ln_std_min", "ln_std_frac_low", "rms", "cos", "cos_centred",
    }
    assert all(isinstance(v, float) for v in m.values())
    assert m["rankme"] == pytest.approx(M.rankme(Z.reshape(-1, 16)))
    assert m["rankme"] > 15


def test_is_collapsed_thresholds():
    ok = {"rankme": 20.0, "ln_std_mean": 0.5}
    assert not M.is_collapsed(ok, rankme_min=10.0, ln_std_min=0.1)
    assert M.is_collapsed({**ok, "rankme": 9.9}, rankme_min=10.0, ln_std_min=0.1)
    assert M.is_collapsed({**ok, "ln_std_mean": 0.09}, rankme_min=10.0, ln_std_min=0.1)
    assert M.is_collapsed({**ok, "rankme": math.nan}, rankme_min=10.0, ln_std_min=0.1)
    assert M.is_collapsed({**ok, "ln_std_mean": math.nan}, rankme_min=10.0, ln_std_min=0.1)


# --- JEPA distances -----------------------------------------------------------------


def _pair():
    pred = torch.tensor([[[1.0, 2.0], [1.0, 1.0], [100.0, -100.0]]], requires_grad=True)
    target = torch.tensor([[[0.0, 4.0], [3.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    return pred, target, mask


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("l1", 1.5),  # token 0: (1 + 2) / 2, token 1: (2 + 1) / 2
        ("smooth_l1", 1.0),  # token 0: (0.5 + 1.5) / 2, token 1: (1.5 + 0.5) / 2
        ("cosine", ((1 - 2 / math.sqrt(5)) + (1 - 1 / math.sqrt(2))) / 2),
    ],
)
def test_jepa_distance_hand_computed(kind, expected):
    pred, target, mask = _pair()
    loss = M.jepa_distance(pred, target, mask, kind)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.all(pred.grad[0, 2] == 0)
    assert pred.grad[0, :2].abs().sum() > 0


@pytest.mark.parametrize("kind", M.DISTANCES)
def test_jepa_distance_ignores_masked_tokens(kind):
    pred, target, mask = _pair()
    noisy_pred, noisy_target = pred.detach().clone(), target.clone()
    noisy_pred[0, 2] = torch.tensor([-7.0, 3e4])
    noisy_target[0, 2] = torch.tensor([5.0, 1e-3])
    a = M.jepa_distance(pred, target, mask, kind)
    b = M.jepa_distance(noisy_pred, noisy_target, mask, kind)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    empty = M.jepa_distance(pred, target, torch.zeros_like(mask), kind)
    assert empty.item() == 0.0


def test_jepa_distance_rejects_unknown_kind():
    pred, target, mask = _pair()
    with pytest.raises(ValueError):
        M.jepa_distance(pred, target, mask, "l2")


def test_constant_baseline_l1_is_the_minimal_constant():
    targets = torch.tensor(
        [[[0.0, 5.0], [1.0, -1.0], [9.0, 2.0]], [[4.0, 0.0], [50.0, 50.0], [2.0, 3.0]]]
    )
    mask = torch.tensor([[True, True, True], [True, False, True]])
    valid = targets[mask]
    # L1 separates over dims and its minimum sits at a data value: brute force over them.
    best = sum(
        min((valid[:, j] - c).abs().mean().item() for c in valid[:, j]) for j in range(2)
    ) / 2
    assert M.constant_baseline(targets, mask, "l1") == pytest.approx(best, rel=1e-6)


def test_constant_baseline_other_kinds():
    g = gen(8)
    targets = torch.randn(4, 6, 8, generator=g) + 3.0
    mask = torch.rand(4, 6, generator=g) > 0.3
    valid = targets[mask]
    mean = valid.mean(0).expand_as(targets)
    assert M.constant_baseline(targets, mask, "smooth_l1") == pytest.approx(
        M.jepa_distance(mean, targets, mask, "smooth_l1").item(), rel=1e-6
    )
    cos = M.constant_baseline(targets, mask, "cosine")
    assert 0 < cos <= M.jepa_distance(mean, targets, mask, "cosine").item() + 1e-7


# --- probes -------------------------------------------------------------------------


def test_ridge_probe_separable_and_noise():
    g = gen(9)
    C, D = 4, 20
    centres = 10.0 * torch.eye(C, D)
    ytr, yte = torch.randint(0, C, (400,), generator=g), torch.randint(0, C, (400,), generator=g)
    Xtr = centres[ytr] + torch.randn(400, D, generator=g)
    Xte = centres[yte] + torch.randn(400, D, generator=g)
    assert M.ridge_probe(Xtr, ytr, Xte, yte, C) == 1.0
    noise_tr, noise_te = torch.randn(1000, D, generator=g), torch.randn(1000, D, generator=g)
    yn_tr, yn_te = torch.randint(0, C, (1000,), generator=g), torch.randint(0, C, (1000,), generator=g)
    assert M.ridge_probe(noise_tr, yn_tr, noise_te, yn_te, C) == pytest.approx(1 / C, abs=0.06)


def test_ridge_probe_more_dims_than_items_matches_closed_form():
    g = gen(13)
    Xtr = torch.randn(60, 300, generator=g, dtype=torch.float64)
    Xte = torch.randn(40, 300, generator=g, dtype=torch.float64)
    ytr, yte = torch.randint(0, 3, (60,), generator=g), torch.randint(0, 3, (40,), generator=g)
    mu, sd = Xtr.mean(0), Xtr.std(0, correction=0)
    A, B = (Xtr - mu) / sd, (Xte - mu) / sd
    Y = F.one_hot(ytr, 3).double()
    eye = torch.eye(300, dtype=torch.float64)
    W = torch.linalg.solve(A.T @ A + 0.5 * 60 * eye, A.T @ (Y - Y.mean(0)))
    expected = ((B @ W + Y.mean(0)).argmax(1) == yte).double().mean().item()
    assert M.ridge_probe(Xtr, ytr, Xte, yte, 3, lam=0.5) == pytest.approx(expected)
    assert M.ridge_probe(Xtr, ytr, Xtr, ytr, 3, lam=1e-4) == 1.0


def test_majority_baseline():
    assert M.majority_baseline(torch.tensor([0, 2, 2, 1]), torch.tensor([2, 2, 0, 1, 2])) == 0.6


def _marker_position_task(n, g, T=16, D=32):
    """Label = whether the marker sits in the first half of the positions.

    Each position has a fixed embedding; the marker is the same vector wherever it sits,
    so the mean over tokens is independent of the label and only attention can read it.
    """
    pos = torch.randn(T, D, generator=gen(100))
    marker = 1.5 * torch.randn(D, generator=gen(101))
    where = torch.randint(0, T, (n,), generator=g)
    X = 0.3 * torch.randn(n, T, D, generator=g) + pos
    X[torch.arange(n), where] += marker
    return X, (where < T // 2).long()


def test_attentive_probe_reads_position_that_mean_pooling_erases():
    g = gen(10)
    Xtr, ytr = _marker_position_task(512, g)
    Xte, yte = _marker_position_task(256, g)
    ridge = M.ridge_probe(Xtr, ytr, Xte, yte, 2)
    before = torch.get_rng_state()
    att = M.attentive_probe(Xtr, ytr, Xte, yte, 2, seed=0)
    assert torch.equal(before, torch.get_rng_state())
    assert ridge < 0.62
    assert att > 0.9
    assert M.attentive_probe(Xtr, ytr, Xte, yte, 2, seed=0) == att


def test_attentive_probe_multi_and_dims_not_divisible_by_heads():
    g = gen(14)
    X = torch.randn(64, 5, 30, generator=g)
    ys = {"a": torch.randint(0, 3, (64,), generator=g), "b": torch.randint(0, 2, (64,), generator=g)}
    out = M.attentive_probe_multi(
        X[:48], {k: y[:48] for k, y in ys.items()}, X[48:], {k: y[48:] for k, y in ys.items()},
        {"a": 3, "b": 2}, steps=5, seed=1,
    )
    assert set(out) == {"a", "b"}
    assert out["b"] == M.attentive_probe(X[:48], ys["b"][:48], X[48:], ys["b"][48:], 2, steps=5, seed=1)


# --- retrieval ----------------------------------------------------------------------


def test_retrieval_recall():
    g = gen(11)
    A = torch.randn(200, 32, generator=g)
    assert M.retrieval_recall(A, A) == {"r1": 1.0, "r5": 1.0}
    r = M.retrieval_recall(A, torch.randn(200, 32, generator=g), ks=(1, 5, 10))
    assert set(r) == {"r1", "r5", "r10"}
    assert r["r1"] < 0.03 and r["r5"] < 0.08
    assert M.retrieval_recall(A, 3 * A + 1)["r1"] == 1.0


def test_mutual_knn():
    g = gen(12)
    A = torch.randn(500, 16, generator=g)
    assert M.mutual_knn(A, A, k=10) == 1.0
    assert M.mutual_knn(A, torch.randn(500, 16, generator=g), k=10) == pytest.approx(10 / 500, abs=0.015)


# --- statistics ---------------------------------------------------------------------


def test_mean_ci_uses_t_distribution():
    mean, half = M.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    mean, half = M.mean_ci([5.0])
    assert mean == 5.0 and math.isnan(half)


def test_welch_t():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0, 1.0]
    ref = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert M.welch_t(a, b) == pytest.approx((ref.statistic, ref.pvalue))
    assert all(math.isnan(v) for v in M.welch_t([1.0], b))
