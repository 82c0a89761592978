"""Measurements on representations: collapse, JEPA distances, probes, retrieval, statistics.

Pure functions on torch tensors (usable from a notebook): `Z` is (N, D), patch tokens are
(N, T, D). No global state, no tracking, no model code; probes keep the global RNG untouched.
"""

from __future__ import annotations

import itertools
import warnings
import math
from typing import Iterator, Sequence

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F

DISTANCES = ("l1", "smooth_l1", "cosine")


def _rows(Z: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (M, D): patch tokens count as rows."""
    Z = torch.as_tensor(Z)
    return Z.reshape(-1, Z.shape[-1]) if Z.dim() != 2 else Z


def _entropy_rank(Z: torch.Tensor, eps: float) -> float:
    s = torch.linalg.svdvals(Z.detach().to(torch.float64))
    p = s / s.sum().clamp_min(1e-300) + eps
    return math.exp(-(p * p.log()).sum().item())


def rankme(Z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): entropy-exponential of the raw singular-value spectrum."""
    return _entropy_rank(_rows(Z), eps)


def effective_rank(Z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe on the column-centred matrix (insensitive to a shared offset)."""
    Z = _rows(Z).to(torch.float64)
    return _entropy_rank(Z - Z.mean(0, keepdim=True), eps)


def ln_std(Z: torch.Tensor) -> dict[str, float]:
    """Per-dimension std over items after a non-affine LayerNorm of each row."""
    Z = _rows(Z).detach().to(torch.float64)
    std = F.layer_norm(Z, Z.shape[-1:]).std(0, correction=0)
    return {
        "mean": std.mean().item(),
        "min": std.min().item(),
        "frac_below_0.01": (std < 0.01).to(torch.float64).mean().item(),
    }


def feature_rms(Z: torch.Tensor) -> float:
    return torch.as_tensor(Z).detach().to(torch.float64).pow(2).mean().sqrt().item()


def mean_cosine(Z: torch.Tensor, centred: bool = False, eps: float = 1e-12) -> float:
    """Mean cosine over distinct pairs via (||sum z_hat||^2 - sum ||z_hat||^2) / (N (N-1)).

    Zero rows get z_hat = 0, so they count as cosine 0 with everything.
    """
    Z = _rows(Z).detach().to(torch.float64)
    n = Z.shape[0]
    if n < 2:
        return float("nan")
    if centred:
        Z = Z - Z.mean(0, keepdim=True)
    U = Z / Z.norm(dim=1, keepdim=True).clamp_min(eps)
    total = U.sum(0).pow(2).sum() - U.pow(2).sum()
    return (total / (n * (n - 1))).item()


def collapse_metrics(Z: torch.Tensor) -> dict[str, float]:
    ln = ln_std(Z)
    return {
        "rankme": rankme(Z),
        "erank": effective_rank(Z),
        "ln_std_mean": ln["mean"],
        "ln_std_min": ln["min"],
        "ln_std_frac_low": ln["frac_below_0.01"],
        "rms": feature_rms(Z),
        "cos": mean_cosine(Z),
        "cos_centred": mean_cosine(Z, centred=True),
    }


def is_collapsed(metrics: dict, rankme_min: float, ln_std_min: float) -> bool:
    r, s = float(metrics["rankme"]), float(metrics["ln_std_mean"])
    return math.isnan(r) or math.isnan(s) or r < rankme_min or s < ln_std_min


def jepa_distance(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, kind: str
) -> torch.Tensor:
    """Differentiable mean distance over valid tokens; pred/target (P, T, D), mask (P, T) bool.

    "l1": mean |pred - target| over valid tokens and dims; "smooth_l1": the same with
    smooth L1 (beta=1); "cosine": mean over valid tokens of 1 - cos(pred, target).
    Reduced in at least float32; returns 0 (still attached to the graph) when no token is valid.
    """
    if kind in ("l1", "smooth_l1"):
        fn = F.l1_loss if kind == "l1" else F.smooth_l1_loss
        per_token = fn(pred, target, reduction="none").mean(-1)
    elif kind == "cosine":
        per_token = 1.0 - F.cosine_similarity(pred, target, dim=-1, eps=1e-8)
    else:
        raise ValueError(f"unknown distance {kind!r}; expected one of {DISTANCES}")
    per_token = per_token.to(torch.promote_types(per_token.dtype, torch.float32))
    if mask is None:
        return per_token.mean()
    mask = mask.to(torch.bool)
    count = mask.sum().clamp_min(1).to(per_token.dtype)
    return torch.where(mask, per_token, torch.zeros_like(per_token)).sum() / count


def constant_baseline(targets: torch.Tensor, mask: torch.Tensor, distance: str) -> float:
    """Distance of the valid targets to one constant vector shared by all tokens.

    The constant is the per-dimension median for "l1" (the exact L1 minimiser), the mean
    for "smooth_l1", and the mean of the unit-normalised targets for "cosine" (the exact
    cosine minimiser; equal in direction to the plain mean when rows share one norm).
    """
    targets = targets.detach()
    mask = mask.to(torch.bool)
    valid = targets[mask]
    if valid.shape[0] == 0:
        return float("nan")
    if distance == "l1":
        const = valid.median(dim=0).values
    elif distance == "smooth_l1":
        const = valid.mean(0)
    elif distance == "cosine":
        const = F.normalize(valid, dim=-1).mean(0)
    else:
        raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
    return jepa_distance(const.expand_as(targets), targets, mask, distance).item()


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = train.reshape(-1, train.shape[-1])
    mu, sd = flat.mean(0), flat.std(0, correction=0).clamp_min(1e-6)
    return (train - mu) / sd, (test - mu) / sd


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return (pred == y).to(torch.float64).mean().item()


def ridge_probe(
    train_X: torch.Tensor,
    train_y: torch.Tensor,
    test_X: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    lam: float = 1e-2,
) -> float:
    """Closed-form ridge regression onto one-hot labels; returns test accuracy.

    Features are standardised with train statistics (which also centres them, so the bias
    is the unpenalised mean of the one-hot targets). (N, T, D) inputs are mean-pooled.
    """
    Xtr, Xte = (torch.as_tensor(x).detach().to(torch.float64) for x in (train_X, test_X))
    if Xtr.dim() == 3:
        Xtr, Xte = Xtr.mean(1), Xte.mean(1)
    Xtr, Xte = _standardise(Xtr, Xte)
    ytr, yte = (torch.as_tensor(y).long().to(Xtr.device) for y in (train_y, test_y))
    Y = F.one_hot(ytr, num_classes).to(torch.float64)
    bias = Y.mean(0)
    n, d = Xtr.shape
    if d <= n:  # (X^T X + lam N I) W = X^T Y
        eye = torch.eye(d, dtype=Xtr.dtype, device=Xtr.device)
        W = torch.linalg.solve(Xtr.T @ Xtr + lam * n * eye, Xtr.T @ (Y - bias))
    else:  # the same W through the N x N system: X^T (X X^T + lam N I)^-1 Y
        eye = torch.eye(n, dtype=Xtr.dtype, device=Xtr.device)
        W = Xtr.T @ torch.linalg.solve(Xtr @ Xtr.T + lam * n * eye, Y - bias)
    return _accuracy((Xte @ W + bias).argmax(1), yte)


def majority_baseline(train_y: torch.Tensor, test_y: torch.Tensor) -> float:
    ytr, yte = torch.as_tensor(train_y).long(), torch.as_tensor(test_y).long()
    return _accuracy(torch.full_like(yte, int(torch.bincount(ytr).argmax())), yte)


def attentive_probe(
    train_T: torch.Tensor,
    train_y: torch.Tensor,
    test_T: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    **kwargs,
) -> float:
    """V-JEPA-style attentive probe on patch tokens (N, T, D) for one label set; test accuracy."""
    return attentive_probe_multi(train_T, {"y": train_y}, test_T, {"y": test_y}, {"y": num_classes}, **kwargs)["y"]


def attentive_probe_multi(
    train_T: torch.Tensor,
    train_ys: dict[str, torch.Tensor],
    test_T: torch.Tensor,
    test_ys: dict[str, torch.Tensor],
    num_classes: dict[str, int],
    steps: int = 150,
    lr: float = 3e-3,
    seed: int = 0,
    heads: int = 4,
    batch_size: int | None = 256,
) -> dict[str, float]:
    """Attentive probes for several label sets at once: {name: test accuracy}.

    One learned query attends (multi-head, LayerNorm on keys/values) to the tokens; the
    query plus the attention output goes through a LayerNorm and one linear classifier per
    label set; the pooling is shared and the summed cross-entropy trains everything (one fit
    instead of one per attribute). Tokens are standardised with train statistics. Trained with
    Adam on shuffled minibatches of `batch_size` (None: full batch); all randomness comes from
    a local generator seeded with `seed`. With one query the attention is computed in an
    exactly equivalent cheap order: the key projection is applied to the query (Wk_h^T q_h)
    and the value projection after pooling, so no (N, T, D) x (D, D) product is ever formed.
    """
    Xtr, Xte = (torch.as_tensor(x).detach().to(torch.float32) for x in (train_T, test_T))
    Xtr, Xte = _standardise(Xtr, Xte)
    d = Xtr.shape[-1]
    dh = -(-d // heads)  # heads * dh may exceed d: the output projection maps it back
    # Key/value LayerNorm statistics do not depend on parameters: normalise once.
    Ntr, Nte = F.layer_norm(Xtr, (d,)), F.layer_norm(Xte, (d,))
    dev = Xtr.device
    names = list(train_ys)
    ytr = {k: torch.as_tensor(train_ys[k]).long().to(dev) for k in names}
    yte = {k: torch.as_tensor(test_ys[k]).long().to(dev) for k in names}
    sizes = [num_classes[k] for k in names]

    g = torch.Generator(device=dev).manual_seed(seed)

    def init(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, device=dev) * std).requires_grad_()

    def const(*shape: int, value: float) -> torch.Tensor:
        return torch.full(shape, value, device=dev, requires_grad=True)

    p = {
        "query": init(d, std=1.0),  # token scale: attention is not uniform at init
        "ln_w": const(d, value=1.0),
        "ln_b": const(d, value=0.0),
        "wq": init(heads, dh, d, std=d**-0.5),
        "wk": init(heads, dh, d, std=d**-0.5),
        "wv": init(heads, dh, d, std=d**-0.5),
        "bv": const(heads, dh, value=0.0),
        "wo": init(d, heads * dh, std=(heads * dh) ** -0.5),
        "bo": const(d, value=0.0),
        "wc": const(sum(sizes), d, value=0.0),
        "bc": const(sum(sizes), value=0.0),
    }

    def logits(Nx: torch.Tensor) -> list[torch.Tensor]:
        q = torch.einsum("hed,d->he", p["wq"], p["query"])  # (H, dh)
        kvec = torch.einsum("hed,he->hd", p["wk"], q) * dh**-0.5  # (H, D)
        # score_t = LN(x_t) . kvec = Nx_t . (w * kvec) + b . kvec; the last term is constant in t.
        n, t = Nx.shape[:2]
        scores = (Nx.reshape(n * t, d) @ (kvec * p["ln_w"]).T).view(n, t, heads)
        attn = scores.transpose(1, 2).contiguous().softmax(-1)  # (N, H, T)
        # Values: Wv_h (w * pooled + b) + bv_h, with the key LayerNorm affine folded into Wv.
        wv = p["wv"] * p["ln_w"]  # (H, dh, D)
        bv = p["wv"] @ p["ln_b"] + p["bv"]  # (H, dh)
        v = torch.einsum("nhd,hed->nhe", attn @ Nx, wv) + bv  # (N, H, dh)
        h = p["query"] + v.flatten(1) @ p["wo"].T + p["bo"]
        return (F.layer_norm(h, (d,)) @ p["wc"].T + p["bc"]).split(sizes, dim=1)

    n_train = Ntr.shape[0]
    bs = n_train if batch_size is None else min(batch_size, n_train)

    def batches() -> Iterator[torch.Tensor | slice]:
        while True:  # one reshuffle per epoch; the incomplete last batch is dropped
            if bs == n_train:
                yield slice(None)
            else:
                order = torch.randperm(n_train, generator=g, device=dev)
                yield from order[: n_train - n_train % bs].split(bs)

    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        opt = torch.optim.Adam(p.values(), lr=lr)
        for idx in itertools.islice(batches(), steps):
            opt.zero_grad(set_to_none=True)
            out = logits(Ntr[idx])
            sum(F.cross_entropy(o, ytr[k][idx]) for o, k in zip(out, names)).backward()
            opt.step()
        with torch.no_grad():
            out = logits(Nte)
            return {k: _accuracy(o.argmax(1), yte[k]) for o, k in zip(out, names)}


def _unit_centred(X: torch.Tensor) -> torch.Tensor:
    X = _rows(X).detach().to(torch.float64)
    return F.normalize(X - X.mean(0, keepdim=True), dim=1, eps=1e-12)


def retrieval_recall(
    A: torch.Tensor, B: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Recall@k of retrieving row i of B from row i of A (cosine on separately centred sets).

    The rank of the partner counts the rows strictly more similar, so ties favour the partner.
    """
    S = _unit_centred(A) @ _unit_centred(B).T
    rank = (S > S.diagonal().unsqueeze(1)).sum(1)
    return {f"r{k}": (rank < k).to(torch.float64).mean().item() for k in ks}


def mutual_knn(A: torch.Tensor, B: torch.Tensor, k: int = 10) -> float:
    """Mean overlap fraction of the k nearest neighbours (centred cosine, self excluded)."""

    def knn_sets(X: torch.Tensor) -> torch.Tensor:
        U = _unit_centred(X)
        S = U @ U.T
        S.fill_diagonal_(-math.inf)
        idx = S.topk(k, dim=1).indices
        return torch.zeros_like(S, dtype=torch.bool).scatter_(1, idx, True)

    return ((knn_sets(A) & knn_sets(B)).sum(1).to(torch.float64) / k).mean().item()


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t-distribution confidence interval (NaN for n < 2)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size < 2:
        return float(x.mean()), float("nan")
    t = scipy.stats.t.ppf((1.0 + confidence) / 2.0, x.size - 1)
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


def welch_t(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's two-sided t-test: (t, p); NaN when either sample has fewer than 2 values."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2 or b.size < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings():  # near-identical samples: scipy warns, the p-value still stands
        warnings.simplefilter("ignore", RuntimeWarning)
        res = scipy.stats.ttest_ind(a, b, equal_var=False)
    return float(res.statistic), float(res.pvalue)
