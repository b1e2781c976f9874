"""TSupCon, the text-anchored supervised contrastive loss of FMbSeg (section 3.3, Eqs. 1-4),
and the two ablation variants of Table 3 (section 4.4.3).

Notation (section 3.3): ``z_i`` (i = 1..B*N) are the aligned patch features of a batch of B
images with N patches each, ``y_i`` their pseudo labels, ``t_k`` (k = 1..K) the frozen CLIP text
features, one per class. All features have unit norm and similarities are dot products, divided
here by a temperature ``tau`` (the paper writes none, i.e. ``tau = 1``, our default).

Choices the paper leaves open (see docs/fmbseg-stage2.md, "Loss"):

1. Patches labelled ``ignore_index`` (no pseudo label) are removed before the loss: they are
   neither anchors nor positives nor negatives (their class is unknown, so using them as
   negatives could push apart patches of the same class).
2. Eq. 4's positive sum ``sum_{l: y_l = y_i}`` excludes ``l = i`` by default (the SupCon [20]
   convention: a patch is not its own positive; ``N_{y_i} - 1`` positives). A patch that is alone
   in its class in the batch then has no ``l_im`` term. ``include_self_positive=True`` reads the
   sum literally (``l = i`` included, ``N_{y_i}`` positives): this adds ``-1/tau`` per term and
   scales the positive pull by ``(N_{y_i} - 1) / N_{y_i}``.
3. A class absent from the batch (``N_k = 0``) has no ``l_t(t_k)`` term (Eq. 2 would be 0/0), but
   its text feature stays a negative in Eq. 3's denominator (``sum_{k'=1..K}``).
4. Eq. 1's normaliser ``B*N + K`` is read as the number of terms summed: the labelled patches
   that have an ``l_im`` term plus the classes present in the batch. The loss is a mean.
   The K_b text terms (classes present in the batch) then weigh K_b / (P + K_b) of the loss,
   ~0.3% for 5 COCO images (P = 6845, K_b ~ 20): the alignment with the text features is slow.
   ``balance_terms=True`` (ours, NOT the paper's) adds the mean text term and the mean patch
   term instead: l = 1/K_b sum_k l_t(t_k) + 1/P sum_i l_im(z_i).

Memory: the patch-patch similarity matrix is (P, P) for P labelled patches; a custom backward
(``_LogSumExpOverOthers``) keeps at most about three such float32 matrices alive: P = 5 images x
37**2 = 6845 patches is 0.19 GB a matrix, ~0.6 GB peak; memory grows with P**2 (P = 20,000 would
need ~5 GB).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_VARIANTS = ("tsupcon", "supcon", "prototype")


@dataclass(frozen=True)
class LossSettings:
    """Settings of the Stage-2 alignment loss.

    variant: "tsupcon" = l_TSupCon (Eq. 1, the paper's loss); "supcon" = SupCon [20] alone, text
        features as extra samples of their class; "prototype" = l_t alone (Eq. 2). Table 3 right.
    temperature: tau dividing every similarity. The paper's Eqs. 3-4 use plain dot products,
        i.e. tau = 1 (a setting of ours).
    include_self_positive: Eq. 4 read literally (l = i among the positives); ours: False.
    balance_terms: "tsupcon" only. False: Eq. 1's single mean over all terms (the paper). True:
        the mean of the text terms plus the mean of the patch terms (ours, not the paper's).
    ignore_index: the label of patches without a pseudo label.
    """

    variant: str = "tsupcon"  # Table 3 (section 4.4.3): the full loss, Eq. 1
    temperature: float = 1.0  # tau: none in Eqs. 3-4 (= 1)
    include_self_positive: bool = False  # Eq. 4: l = i excluded (SupCon [20] convention), ours
    balance_terms: bool = False  # Eq. 1 as written; True: mean text term + mean patch term (ours)
    ignore_index: int = -1  # ours: patches no Stage-1 mask covers

    def __post_init__(self) -> None:
        if self.variant not in LOSS_VARIANTS:
            raise ValueError(f"Unknown loss variant {self.variant!r}; choose one of {LOSS_VARIANTS}.")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")


def _prepare(
    patch_embeddings: torch.Tensor,
    labels: torch.Tensor,
    text_embeddings: torch.Tensor,
    ignore_index: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate, drop ignored patches and L2-normalise (a no-op on unit-norm inputs)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if patch_embeddings.ndim != 2:
        raise ValueError(f"patch_embeddings must be (P, D), got shape {tuple(patch_embeddings.shape)}.")
    if text_embeddings.ndim != 2 or text_embeddings.shape[1] != patch_embeddings.shape[1]:
        raise ValueError(
            f"text_embeddings must be (K, D) with D = {patch_embeddings.shape[1]} like the patches, "
            f"got shape {tuple(text_embeddings.shape)}."
        )
    if labels.shape != patch_embeddings.shape[:1]:
        raise ValueError(f"labels must be (P,) = ({patch_embeddings.shape[0]},), got shape {tuple(labels.shape)}.")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}.")
    num_classes = text_embeddings.shape[0]
    labelled = labels != ignore_index
    kept_labels = labels[labelled].long()
    if kept_labels.numel() and (kept_labels.min() < 0 or kept_labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) or equal ignore_index={ignore_index}; "
            f"found values in [{int(kept_labels.min())}, {int(kept_labels.max())}]."
        )
    patches = F.normalize(patch_embeddings[labelled], dim=-1)
    texts = F.normalize(text_embeddings.to(patches.dtype), dim=-1)
    return patches, kept_labels, texts


class _LogSumExpOverOthers(torch.autograd.Function):
    """lse_i = log sum_{j != i} exp(s_i . s_j / tau) for samples s (P, D) -> (P,), with a
    backward that uses the symmetry of the similarity matrix: one (P, P) x (P, D) product instead
    of autograd's two, and two (P, P) matrices alive instead of about four.

    d/ds_m sum_i g_i lse_i = ((G + G^T) s)_m / tau, G_ij = g_i p_ij, p_ij = exp(s_i.s_j/tau - lse_i).
    """

    @staticmethod
    def forward(ctx, samples: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = samples @ samples.T  # (P, P)
        logits.div_(temperature)
        logits.fill_diagonal_(float("-inf"))  # j != i
        log_partition = torch.logsumexp(logits, dim=1)
        probabilities = logits.sub_(log_partition[:, None]).exp_()  # in place: p_ij, p_ii = 0
        ctx.save_for_backward(samples, probabilities)
        ctx.temperature = temperature
        return log_partition

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_partition: torch.Tensor):
        samples, probabilities = ctx.saved_tensors
        symmetric = probabilities * grad_log_partition[:, None]  # G
        symmetric.addcmul_(probabilities.T, grad_log_partition[None, :])  # G + G^T
        return symmetric @ samples / ctx.temperature, None


def _log_sum_exp_over_others(samples: torch.Tensor, temperature: float) -> torch.Tensor:
    """(P, D) -> (P,): log sum_{j != i} exp(s_i . s_j / tau). Needs P >= 2."""
    return _LogSumExpOverOthers.apply(samples, temperature)


def _supcon_terms(
    samples: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    temperature: float,
    include_self_positive: bool,
    log_partition: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of the per-anchor SupCon terms (Eq. 4 for every sample as anchor).

    Eq. 4: l_im(z_i) = 1/N_{y_i} sum_{l: y_l = y_i} (-z_i.z_l + log sum_{j != i} exp(z_i.z_j)).
    The positive sum is z_i . (sum of the class's samples), so only the log-partition needs the
    (P, P) matrix. Returns (sum over anchors that have a term, number of such anchors).
    """
    num_samples = samples.shape[0]
    if num_samples < 2:  # no j != i: the log-partition is log(0)
        return samples.sum() * 0.0, torch.zeros((), dtype=torch.long, device=samples.device)
    if log_partition is None:
        log_partition = _log_sum_exp_over_others(samples, temperature)
    class_sums = samples.new_zeros(num_classes, samples.shape[1]).index_add(0, labels, samples)
    positive_similarity = (samples * class_sums[labels]).sum(dim=1)  # sum_{l: y_l = y_i} s_i.s_l
    class_counts = torch.bincount(labels, minlength=num_classes)
    positive_count = class_counts[labels]  # N_{y_i}, l = i included
    if not include_self_positive:
        positive_similarity = positive_similarity - (samples * samples).sum(dim=1)
        positive_count = positive_count - 1
    has_term = positive_count > 0
    positive_count = positive_count[has_term].to(samples.dtype)
    terms = -positive_similarity[has_term] / (temperature * positive_count) + log_partition[has_term]
    return terms.sum(), has_term.sum()


def _prototype_terms(
    patches: torch.Tensor,
    labels: torch.Tensor,
    texts: torch.Tensor,
    temperature: float,
    patch_log_partition: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over present classes of l_t(t_k) (Eq. 2), and the number of present classes."""
    num_classes = texts.shape[0]
    text_logits = patches @ texts.T / temperature  # (P, K): z_i.t_k / tau
    log_denominator = torch.logsumexp(text_logits, dim=1)  # log sum_k exp(z_i.t_k)
    if patch_log_partition is not None:  # + sum_{j != i} exp(z_i.z_j)
        log_denominator = torch.logaddexp(log_denominator, patch_log_partition)
    # Eq. 3: l_t(z_i, t_{y_i}) = -z_i.t_{y_i} + log(sum_k exp(z_i.t_k) + sum_{j != i} exp(z_i.z_j))
    per_patch = -text_logits.gather(1, labels[:, None]).squeeze(1) + log_denominator
    # Eq. 2: l_t(t_k) = 1/N_k sum_{i: y_i = k} l_t(z_i, t_k), for classes with N_k > 0
    class_counts = torch.bincount(labels, minlength=num_classes)
    class_sums = per_patch.new_zeros(num_classes).index_add(0, labels, per_patch)
    present = class_counts > 0
    return (class_sums[present] / class_counts[present].to(per_patch.dtype)).sum(), present.sum()


def _empty_loss(patch_embeddings: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph (no labelled patch in the batch)."""
    return patch_embeddings.sum() * 0.0


def tsupcon_loss(
    patch_embeddings: torch.Tensor,
    labels: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    temperature: float = 1.0,
    include_self_positive: bool = False,
    balance_terms: bool = False,
    ignore_index: int = -1,
) -> torch.Tensor:
    """l_TSupCon (Eq. 1) of one batch.

    Eq. 1: l_TSupCon = 1/(B*N + K) (sum_k l_t(t_k) + sum_i l_im(z_i)), with l_t from Eqs. 2-3 and
    l_im from Eq. 4; the normaliser counts the terms actually summed (module docstring, item 4).
    ``balance_terms=True`` (ours): 1/K_b sum_k l_t(t_k) + 1/P sum_i l_im(z_i) instead.

    patch_embeddings: (P, D) aligned patch features of the whole batch (B*N patches).
    labels: (P,) integer pseudo labels in [0, K), or ``ignore_index``.
    text_embeddings: (K, D) frozen class text features.
    Returns a scalar tensor.
    """
    patches, kept_labels, texts = _prepare(patch_embeddings, labels, text_embeddings, ignore_index, temperature)
    if kept_labels.numel() == 0:
        return _empty_loss(patch_embeddings)
    patch_log_partition = _log_sum_exp_over_others(patches, temperature) if patches.shape[0] >= 2 else None
    text_sum, text_count = _prototype_terms(patches, kept_labels, texts, temperature, patch_log_partition)
    image_sum, image_count = _supcon_terms(
        patches,
        kept_labels,
        texts.shape[0],
        temperature,
        include_self_positive,
        log_partition=patch_log_partition,
    )
    if balance_terms:
        return text_sum / text_count + (image_sum / image_count if image_count > 0 else 0.0)
    return (text_sum + image_sum) / (text_count + image_count)


def prototype_loss(
    patch_embeddings: torch.Tensor,
    labels: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -1,
) -> torch.Tensor:
    """The prototype loss alone (Eq. 2), Table 3's "l_t (2)": mean of l_t(t_k) over the classes
    present in the batch. Eq. 3 keeps its patch-patch negatives. Shapes as ``tsupcon_loss``."""
    patches, kept_labels, texts = _prepare(patch_embeddings, labels, text_embeddings, ignore_index, temperature)
    if kept_labels.numel() == 0:
        return _empty_loss(patch_embeddings)
    patch_log_partition = _log_sum_exp_over_others(patches, temperature) if patches.shape[0] >= 2 else None
    text_sum, text_count = _prototype_terms(patches, kept_labels, texts, temperature, patch_log_partition)
    return text_sum / text_count


def supcon_loss(
    patch_embeddings: torch.Tensor,
    labels: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -1,
) -> torch.Tensor:
    """SupCon [20] alone, Table 3's "l_SupCon": the K text features join the batch as extra
    samples labelled with their class, and every sample is an anchor (Eq. 4 over P + K samples,
    positives exclude the anchor itself as in [20]). Mean over the anchors that have a positive;
    texts of classes absent from the batch are negatives only. Shapes as ``tsupcon_loss``."""
    patches, kept_labels, texts = _prepare(patch_embeddings, labels, text_embeddings, ignore_index, temperature)
    if kept_labels.numel() == 0:
        return _empty_loss(patch_embeddings)
    num_classes = texts.shape[0]
    samples = torch.cat([patches, texts], dim=0)  # (P + K, D)
    sample_labels = torch.cat([kept_labels, torch.arange(num_classes, device=kept_labels.device)])
    total, count = _supcon_terms(samples, sample_labels, num_classes, temperature, include_self_positive=False)
    return total / count


def alignment_loss(
    patch_embeddings: torch.Tensor,
    labels: torch.Tensor,
    text_embeddings: torch.Tensor,
    settings: LossSettings = LossSettings(),
) -> torch.Tensor:
    """The loss chosen by ``settings.variant``; shapes as ``tsupcon_loss``."""
    common = dict(temperature=settings.temperature, ignore_index=settings.ignore_index)
    if settings.variant == "tsupcon":
        return tsupcon_loss(
            patch_embeddings,
            labels,
            text_embeddings,
            include_self_positive=settings.include_self_positive,
            balance_terms=settings.balance_terms,
            **common,
        )
    if settings.variant == "prototype":
        return prototype_loss(patch_embeddings, labels, text_embeddings, **common)
    return supcon_loss(patch_embeddings, labels, text_embeddings, **common)
