"""Contrastive losses for image-report pretraining: CLIP, MedCLIP semantic matching (as
published, and our cosine variant), SigLIP.

Every loss is written once, as "these query rows against all these key columns, the positive
pair of query row i sits in column offset + i". A single process passes its whole batch
with offset 0; under DDP each rank passes its local rows against the features gathered from
all ranks with offset rank * local_batch ("local loss"). Averaging the per-rank losses, as DDP
averages gradients, then gives exactly the loss and gradients of one process holding the
concatenated batch (every rank must use the same local batch size, i.e. drop_last=True).

Two label-aware kinds, both soft cross-entropy of scale * image @ text^T in both directions,
averaged; they differ in the targets:

- `medclip` (the published formula, MedCLIP's `ImageTextContrastiveLoss._soft_clip_loss`):
  label vectors keep the CheXpert values 1 / 0 / -1 and turn blank (NaN) into 0
  (`medclip_label_vectors`); targets = softmax(image_vectors @ text_vectors^T) over the raw
  dot products, row-wise for image->text, and softmax of the transpose for text->image
  (`published_soft_targets`). Without labels it is the CLIP loss, as in MedCLIP's code. Note
  what this does: an uncertain finding repels a positive one (1 * -1), and every row keeps
  weight on studies that share no finding with it (exp(0) = 1 against exp(shared count)).
- `medclip_cosine` (ours): positive (1) -> 1, uncertain (-1) -> `uncertain_value` (default
  0.5), negative (0) and blank (NaN) -> 0; with `no_finding_rule` a study with no positive
  finding gets 'No Finding' = 1, so every vector is non-zero (`label_vectors`). Targets = the
  cosine similarity of the label vectors divided by its row sum (`soft_targets`), the softmax
  of the log-similarity: identical label vectors get exactly equal weight, partly overlapping
  ones proportionally less, disjoint ones none, and a batch in which every study has its own
  label vector gives one-hot targets, i.e. exactly the CLIP loss. The published softmax puts
  weight e / (e + B - 1) on the own pair even then, so it never reduces to CLIP.

Unpaired rows (MedCLIP's decoupled data; see unpaired.py): the label-aware losses also take
more image rows than text rows or the reverse. The first `num_pairs` rows of each side are the
pairs; the image-only / text-only rows after them have no own pair and learn from the label
similarity alone. Under `medclip` every row has a target (a softmax row always sums to 1).
Under `medclip_cosine` an unpaired row whose labels share nothing with any column of the other
side has no target at all: it is left out of that direction's mean.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from medclip_nb.labels import LABEL_INDEX, NUM_LABELS

NO_FINDING = LABEL_INDEX["No Finding"]
LOSS_KINDS = ("clip", "medclip", "medclip_cosine", "siglip")
# The kinds whose targets come from the CheXpert labels (and that accept unpaired rows).
LABEL_LOSS_KINDS = ("medclip", "medclip_cosine")
SOFT_TARGET_KINDS = {"medclip": "published", "medclip_cosine": "cosine"}

# Largest logit multiplier (CLIP / MedCLIP clamp the learnable log scale to [0, ln 100]).
MAX_LOGIT_SCALE = 100.0
LOG_MAX_LOGIT_SCALE = math.log(MAX_LOGIT_SCALE)


# ---- label vectors and soft targets ---------------------------------------------------------
def _checked_labels(labels: Tensor) -> Tensor:
    """CheXpert label values `[B, 14]` as float, refusing other shapes and values than 1 / 0 / -1 / NaN."""
    if labels.ndim != 2 or labels.shape[1] != NUM_LABELS:
        raise ValueError(f"labels must have shape [batch, {NUM_LABELS}], got {list(labels.shape)}")
    labels = labels.float()
    known = ~torch.isnan(labels)
    allowed = (labels == 1) | (labels == 0) | (labels == -1)
    # Checked where it is free: the dataset's labels were validated when it was loaded, and a
    # check on a GPU tensor would make the host wait for the device at every step.
    if labels.device.type == "cpu" and not bool((allowed | ~known).all()):
        bad = labels[known & ~allowed][0].item()
        raise ValueError(f"labels must hold 1, 0, -1 or NaN (blank); found {bad}")
    return labels


UNCERTAIN_RULES = ("keep", "zero")


def side_labels(labels: Tensor, uncertain: str) -> Tensor:
    """One side's labels before its encoding: an uncertain -1 kept, or read as 0 ('zero': MedCLIP's
    image side, whose preprocessing scripts write -1 -> 0; its text side keeps -1)."""
    if uncertain not in UNCERTAIN_RULES:
        raise ValueError(f"uncertain label rule {uncertain!r} is not one of {', '.join(UNCERTAIN_RULES)}")
    return torch.where(labels == -1, torch.zeros_like(labels), labels) if uncertain == "zero" else labels


def medclip_label_vectors(labels: Tensor) -> Tensor:
    """MedCLIP's label encoding (its dataset code path): blank (NaN) -> 0; 1, 0 and -1 kept."""
    return torch.nan_to_num(_checked_labels(labels), nan=0.0)


def published_soft_targets(query_vectors: Tensor, key_vectors: Tensor) -> Tensor:
    """MedCLIP's published soft targets `[b, N]`: softmax over each row of the raw label dot
    products query_vectors @ key_vectors^T (no normalisation). Pass the text vectors as the
    queries for the text->image direction (the softmax of the transposed similarity)."""
    return torch.softmax(query_vectors.float() @ key_vectors.float().T, dim=1)


def label_vectors(labels: Tensor, uncertain_value: float = 0.5, no_finding_rule: bool = True) -> Tensor:
    """CheXpert label values `[B, 14]` (1 / 0 / -1 / NaN) -> the `medclip_cosine` label vectors `[B, 14]`.

    Positive (1) -> 1; uncertain (-1) -> `uncertain_value`; negative (0) and blank (NaN) -> 0.
    With `no_finding_rule`, a row with no positive finding gets 'No Finding' = 1, so every row
    is non-zero and has a defined cosine similarity with every other row (without it, an
    all-zero row matches nothing and falls back to its own pair, see `soft_targets`).
    """
    labels = _checked_labels(labels)
    vectors = torch.where(labels == 1, 1.0, 0.0)
    vectors = torch.where(labels == -1, float(uncertain_value), vectors)
    if no_finding_rule:
        no_positive = ~(labels == 1).any(dim=1)
        vectors[:, NO_FINDING] = torch.where(no_positive, 1.0, vectors[:, NO_FINDING])
    return vectors


def soft_targets(query_vectors: Tensor, key_vectors: Tensor, offset: int = 0, num_pairs: int | None = None) -> Tensor:
    """`medclip_cosine` soft targets `[b, N]`: cosine similarity of the label vectors, each row divided
    by its sum (the softmax of the log-similarity; see the module docstring for why).

    Row i's own pair is column `offset + i` for the first `num_pairs` rows (default: every
    row); a row whose label vector shares nothing with any column (only possible when query
    and key labels differ) falls back to that pair alone. An unpaired row (i >= num_pairs)
    with no overlap has no target: its row is all zeros.
    """
    similarity = F.normalize(query_vectors.float(), dim=1) @ F.normalize(key_vectors.float(), dim=1).T
    similarity = similarity.clamp_min(0)  # label vectors are non-negative; guards rounding only
    own_pair = _positive_mask(similarity.shape, offset, similarity.device, num_pairs).to(similarity.dtype)
    no_overlap = similarity.sum(dim=1, keepdim=True) <= 0
    similarity = torch.where(no_overlap, own_pair, similarity)
    # The floor only turns 0 / 0 (an unpaired row without a target) into 0; any overlap sums to far more.
    return similarity / similarity.sum(dim=1, keepdim=True).clamp_min(torch.finfo(similarity.dtype).tiny)


# ---- loss cores: query rows against all key columns ------------------------------------------
def _positive_mask(shape: torch.Size | tuple[int, int], offset: int, device, num_pairs: int | None = None) -> Tensor:
    """`[rows, cols]` bool: row i's own pair at column offset + i, for rows i < num_pairs (all by default)."""
    rows, cols = shape
    row_index = torch.arange(rows, device=device)
    mask = (row_index[:, None] + offset) == torch.arange(cols, device=device)[None, :]
    if num_pairs is not None:
        mask &= (row_index < num_pairs)[:, None]
    return mask


def _pair_targets(rows: int, offset: int, device) -> Tensor:
    return torch.arange(rows, device=device) + offset


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over rows; class-index or probability targets. Per-row values then one
    mean for both kinds, so one-hot soft targets give bit-for-bit the class-index loss (the
    built-in 'mean' reductions of the two kinds sum in different orders)."""
    return F.cross_entropy(logits, targets, reduction="none").mean()


def _soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """`_cross_entropy` with probability targets, averaged over the rows that have a target
    (an all-zero row is an unpaired sample without one). Bit-for-bit `_cross_entropy` when every
    row has one; both are computed so that no value has to come back to the host."""
    per_row = F.cross_entropy(logits, targets, reduction="none")
    has_target = targets.sum(dim=1) > 0
    rows_with_target = has_target.sum().clamp_min(1)
    return torch.where(has_target.all(), per_row.mean(), per_row.sum() / rows_with_target)


def _clip_terms(image_q, text_k, text_q, image_k, logit_scale, offset: int) -> dict[str, Tensor]:
    targets = _pair_targets(image_q.shape[0], offset, image_q.device)
    return {
        "loss_i2t": _cross_entropy(logit_scale * image_q @ text_k.T, targets),
        "loss_t2i": _cross_entropy(logit_scale * text_q @ image_k.T, targets),
    }


def _label_targets(targets: str, query_vectors: Tensor, key_vectors: Tensor, offset: int,
                   num_pairs: int | None) -> Tensor:
    if targets == "published":
        return published_soft_targets(query_vectors, key_vectors)
    return soft_targets(query_vectors, key_vectors, offset, num_pairs)


def _encode_labels(targets: str, labels: Tensor, uncertain_value: float, no_finding_rule: bool) -> Tensor:
    if targets == "published":
        return medclip_label_vectors(labels)
    return label_vectors(labels, uncertain_value, no_finding_rule)


def _medclip_terms(
    image_q, text_k, text_q, image_k, logit_scale, image_vec_q, text_vec_k, text_vec_q, image_vec_k, offset: int,
    num_pairs: int | None = None, targets: str = "published",
) -> dict[str, Tensor]:
    # cross_entropy with probability targets is the soft cross-entropy -(t * log_softmax).sum(1)
    i2t_targets = _label_targets(targets, image_vec_q, text_vec_k, offset, num_pairs)
    t2i_targets = _label_targets(targets, text_vec_q, image_vec_k, offset, num_pairs)
    return {
        "loss_i2t": _soft_cross_entropy(logit_scale * image_q @ text_k.T, i2t_targets),
        "loss_t2i": _soft_cross_entropy(logit_scale * text_q @ image_k.T, t2i_targets),
    }


def _siglip_terms(image_q, text_k, logit_scale, logit_bias, offset: int) -> dict[str, Tensor]:
    logits = logit_scale * image_q @ text_k.T + logit_bias
    positive = _positive_mask(logits.shape, offset, logits.device)
    signs = torch.where(positive, 1.0, -1.0).to(logits.dtype)
    pair_log_likelihood = F.logsigmoid(signs * logits)
    rows = logits.shape[0]
    # Divided by the rows of this process: averaged over ranks this is the sum over the whole
    # N x N matrix divided by N, as in the single-process loss.
    return {
        "loss_pos": -(pair_log_likelihood * positive).sum() / rows,
        "loss_neg": -(pair_log_likelihood * ~positive).sum() / rows,
    }


def _finish(terms: dict[str, Tensor], mean: bool) -> tuple[Tensor, dict[str, Tensor]]:
    values = list(terms.values())
    loss = sum(values) / len(values) if mean else sum(values)
    return loss, {k: v.detach() for k, v in terms.items()}


# ---- public single-batch losses ---------------------------------------------------------------
def clip_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float) -> tuple[Tensor,
                                                                                               dict[str, Tensor]]:
    """Symmetric InfoNCE: logits = scale * image @ text^T, cross-entropy against the diagonal
    for image->text (rows) and text->image (columns), averaged.

    Returns (loss, {'loss_i2t', 'loss_t2i'}) with the terms detached.
    """
    return _finish(_clip_terms(image_embeds, text_embeds, text_embeds, image_embeds, logit_scale, 0), mean=True)


def medclip_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    image_labels: Tensor | None,
    text_labels: Tensor | None,
    uncertain_value: float | None = None,
    num_pairs: int | None = None,
    *,
    targets: str = "published",
    no_finding_rule: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """MedCLIP semantic matching: soft cross-entropy of scale * image @ text^T against label-
    similarity targets, image->text and text->image, averaged.

    `targets`: 'published' (default; MedCLIP's formula, `published_soft_targets` of
    `medclip_label_vectors`) or 'cosine' (ours, `soft_targets` of `label_vectors`, which alone
    reads `uncertain_value` (default 0.5) and `no_finding_rule`). `image_labels` `[Bi, 14]` /
    `text_labels` `[Bt, 14]` are CheXpert values, one row per image / text embedding; with
    either one None the published loss is `clip_loss`, as in MedCLIP's code. `num_pairs`: the
    first rows of each side that are image-report pairs; the rows after them are unpaired
    (image-only or text-only). None means every row is a pair (Bi == Bt).
    Returns (loss, {'loss_i2t', 'loss_t2i'}).
    """
    if targets not in ("published", "cosine"):
        raise ValueError(f"medclip loss: targets {targets!r} is not one of published, cosine")
    if targets == "published" and uncertain_value is not None:
        raise ValueError("medclip loss: uncertain_value applies to the cosine targets only (targets='cosine')")
    rows_i, rows_t = image_embeds.shape[0], text_embeds.shape[0]
    if image_labels is None or text_labels is None:
        if targets == "cosine":
            raise ValueError("medclip_cosine loss needs the image and text labels")
        if num_pairs is not None or rows_i != rows_t:
            raise ValueError("medclip loss: unpaired rows need labels")
        return clip_loss(image_embeds, text_embeds, logit_scale)
    if image_labels.shape[0] != rows_i or text_labels.shape[0] != rows_t:
        raise ValueError(f"medclip loss: {rows_i} images / {rows_t} texts but {image_labels.shape[0]} / "
                         f"{text_labels.shape[0]} label rows")
    if num_pairs is None and rows_i != rows_t:
        raise ValueError(f"medclip loss: {rows_i} images and {rows_t} texts; pass num_pairs (the paired rows first)")
    if num_pairs is not None and not 0 <= num_pairs <= min(rows_i, rows_t):
        raise ValueError(f"medclip loss: num_pairs {num_pairs} is not in [0, {min(rows_i, rows_t)}]")
    uncertain = 0.5 if uncertain_value is None else uncertain_value
    image_vectors = _encode_labels(targets, image_labels, uncertain, no_finding_rule).to(image_embeds.device)
    text_vectors = _encode_labels(targets, text_labels, uncertain, no_finding_rule).to(image_embeds.device)
    terms = _medclip_terms(
        image_embeds, text_embeds, text_embeds, image_embeds, logit_scale,
        image_vectors, text_vectors, text_vectors, image_vectors, 0, num_pairs, targets,
    )
    return _finish(terms, mean=True)


def medclip_cosine_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    image_labels: Tensor,
    text_labels: Tensor,
    uncertain_value: float = 0.5,
    num_pairs: int | None = None,
    no_finding_rule: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """`medclip_loss` with our row-normalised cosine targets (loss kind `medclip_cosine`).
    When every sample has its own label vector (e.g. identity labels) the all-pairs loss
    equals `clip_loss`."""
    return medclip_loss(image_embeds, text_embeds, logit_scale, image_labels, text_labels, uncertain_value,
                        num_pairs, targets="cosine", no_finding_rule=no_finding_rule)


def siglip_loss(
    image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise sigmoid loss (SigLIP): every (image, text) pair is a binary problem, +1 on the
    diagonal and -1 elsewhere; loss = -sum(logsigmoid(sign * (scale * sim + bias))) / B.

    Returns (loss, {'loss_pos', 'loss_neg'}), the diagonal and off-diagonal parts of the sum.
    """
    return _finish(_siglip_terms(image_embeds, text_embeds, logit_scale, logit_bias, 0), mean=False)


# ---- distributed ------------------------------------------------------------------------------
def _distributed_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(*tensors: Tensor) -> tuple[list[Tensor], int]:
    """All-gather each tensor along dim 0 across the DDP ranks.

    Returns (the concatenated tensors, the offset of this rank's rows). This rank's slot is its
    own local tensor, so its gradient flows directly. The other slots are not detached: their
    gradients are summed back to the rank that owns them (the all-gather of
    `torch.distributed.nn`). With them detached, as in open_clip's default, the terms in which a
    sample is a key column of another rank's rows would be lost and the gradient would not equal
    the single-process one. Every rank must pass the same number of rows.

    Without an initialised process group, or with one rank, returns the tensors unchanged and 0.
    """
    rank, world_size = _distributed_world()
    if world_size == 1:
        return list(tensors), 0
    from torch.distributed.nn.functional import all_gather

    gathered = []
    for tensor in tensors:
        parts = list(all_gather(tensor))
        parts[rank] = tensor
        gathered.append(torch.cat(parts, dim=0))
    return gathered, rank * tensors[0].shape[0]


def _local_rows(*tensors: Tensor) -> tuple[list[Tensor], int]:
    """`gather_features` without the gathering: the tensors as they are, offset 0."""
    return list(tensors), 0


class ContrastiveLoss(nn.Module):
    """The training loss: `kind` is one of LOSS_KINDS.

    `forward(outputs, labels)` takes the model's output dict (image_embeds, text_embeds,
    logit_scale, logit_bias) and the batch's CheXpert labels `[B, 14]` (used by the label-aware
    kinds; 'medclip' without labels is the CLIP loss, as published), and returns (loss, terms).
    `uncertain_value` and `no_finding_rule` shape the 'medclip_cosine' label vectors only.
    `text_labels` (label-aware kinds) are the text rows' own labels when they differ from their
    image's (a sentence with its row of a sentence-label table); with unpaired rows (single process
    only) `num_pairs` says how many leading rows are pairs (see `medclip_loss`).
    Under DDP, local rows are scored against the features of all ranks, so the loss averaged
    over ranks and its gradients are those of one process holding the whole batch. Computed in
    float32 with autocast off (log-softmax over up to 100 x logits).
    """

    def __init__(self, kind: str = "clip", uncertain_value: float = 0.5, no_finding_rule: bool = True,
                 image_uncertain: str = "keep", text_uncertain: str = "keep"):
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"loss kind {kind!r} is not one of {', '.join(LOSS_KINDS)}")
        for rule in (image_uncertain, text_uncertain):
            if rule not in UNCERTAIN_RULES:
                raise ValueError(f"uncertain label rule {rule!r} is not one of {', '.join(UNCERTAIN_RULES)}")
        self.kind = kind
        self.uncertain_value = float(uncertain_value)
        self.no_finding_rule = bool(no_finding_rule)
        self.image_uncertain, self.text_uncertain = image_uncertain, text_uncertain

    def side_labels(self, labels: Tensor | None, text_labels: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """(image labels, text labels) after each side's uncertain rule; when the sides' rules differ a
        pair's text gets its own copy of the study's labels."""
        if labels is None or self.kind not in LABEL_LOSS_KINDS:
            return labels, text_labels
        if text_labels is None and self.image_uncertain != self.text_uncertain:
            text_labels = labels
        image = side_labels(labels, self.image_uncertain)
        return image, None if text_labels is None else side_labels(text_labels, self.text_uncertain)

    def extra_repr(self) -> str:
        if self.kind == "medclip_cosine":
            return f"kind={self.kind!r}, uncertain_value={self.uncertain_value}, no_finding_rule={self.no_finding_rule}"
        return f"kind={self.kind!r}"

    def chance(self, n_images: int, n_texts: int) -> float | None:
        """The loss of a model that scores every pair alike, for `n_images` image rows against
        `n_texts` text columns and the reverse (all ranks' when gathered): ln(columns) for each
        softmax direction, averaged (soft targets sum to 1, so the label-aware kinds' is the
        same); None for siglip, whose loss at equal scores depends on its bias."""
        if self.kind == "siglip" or min(n_images, n_texts) < 1:
            return None
        return (math.log(n_texts) + math.log(n_images)) / 2

    def label_loss(self, image: Tensor, text: Tensor, scale, image_labels, text_labels, num_pairs=None):
        """This kind's label-aware loss of one process's rows alone (no gathering): validation, unpaired rows."""
        targets = SOFT_TARGET_KINDS[self.kind]
        uncertain = self.uncertain_value if targets == "cosine" else None
        return medclip_loss(image, text, scale, image_labels, text_labels, uncertain, num_pairs,
                            targets=targets, no_finding_rule=self.no_finding_rule)

    def forward(
        self, outputs: dict, labels: Tensor | None = None, text_labels: Tensor | None = None,
        num_pairs: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return self.compute(outputs, labels, text_labels, num_pairs)

    def compute(
        self, outputs: dict, labels: Tensor | None = None, text_labels: Tensor | None = None,
        num_pairs: int | None = None, *, gather: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss `forward` returns; `gather=False` scores this process's rows alone, against
        its own columns (validation: its shards need not be the same size on every rank)."""
        gather_rows = gather_features if gather else _local_rows
        if text_labels is not None and (self.kind not in LABEL_LOSS_KINDS or labels is None):
            raise ValueError("text_labels (sentence labels, unpaired rows) need a medclip loss kind and image labels")
        labels, text_labels = self.side_labels(labels, text_labels)
        if num_pairs is not None and (text_labels is None or _distributed_world()[1] > 1):
            raise ValueError("unpaired rows (num_pairs) need text_labels and a single process")
        image = outputs["image_embeds"]
        with torch.autocast(device_type=image.device.type, enabled=False):
            image = image.float()
            text = outputs["text_embeds"].float()
            scale = outputs["logit_scale"].float()

            if self.kind == "siglip":
                bias = outputs.get("logit_bias")
                if bias is None:
                    raise ValueError("siglip loss needs a model built with loss 'siglip' (its logit_bias is None)")
                # The image rows of all ranks against all texts cover the N x N matrix exactly once.
                (text_all,), offset = gather_rows(text)
                return _finish(_siglip_terms(image, text_all, scale, bias.float(), offset), mean=False)

            if self.kind == "clip" or (self.kind == "medclip" and labels is None):
                (image_all, text_all), offset = gather_rows(image, text)
                return _finish(_clip_terms(image, text_all, text, image_all, scale, offset), mean=True)

            if labels is None:
                raise ValueError(f"{self.kind} loss needs the batch labels")
            if num_pairs is not None:
                return self.label_loss(image, text, scale, labels, text_labels, num_pairs)
            targets = SOFT_TARGET_KINDS[self.kind]
            # Label vectors are built where the labels are (CPU from the collate: no device sync).
            encode = lambda values: _encode_labels(targets, values, self.uncertain_value, self.no_finding_rule)
            image_vectors = encode(labels).to(image.device)
            if text_labels is None:  # image and report of a pair come from one study: one label vector
                (image_all, text_all, vectors_all), offset = gather_rows(image, text, image_vectors)
                text_vectors, image_vectors_all, text_vectors_all = image_vectors, vectors_all, vectors_all
            else:  # a sampled sentence with its own labels (sentence-label table)
                text_vectors = encode(text_labels).to(image.device)
                (image_all, text_all, image_vectors_all, text_vectors_all), offset = gather_rows(
                    image, text, image_vectors, text_vectors)
            terms = _medclip_terms(
                image, text_all, text, image_all, scale, image_vectors, text_vectors_all, text_vectors,
                image_vectors_all, offset, None, targets,
            )
            return _finish(terms, mean=True)
