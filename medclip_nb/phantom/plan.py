"""The plan of a phantom: patients, studies, patient-disjoint splits, dates, report styles,
and each study's findings and images, every draw from its own seeded stream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medclip_nb.phantom.findings import Finding, pick, sample_findings

# Target shares of the phantom; see generate_phantom's docstring.
SPLIT_SHARES = {"test": 0.20, "validate": 0.10}  # the rest is train
LATERAL_SHARE_PA, LATERAL_SHARE_AP = 0.40, 0.08  # about 25% of studies overall
BLANK_VIEW_SHARE = 0.04
IMPRESSION_ONLY_SHARE, NO_SECTIONS_SHARE = 0.03, 0.01

_RNG_PLAN, RNG_STUDY, RNG_SUBJECT, _RNG_TEST_COHORT = 0, 1, 2, 3  # independent random streams per purpose


@dataclass
class PlannedImage:
    dicom_id: str
    view: str  # ViewPosition as drawn ("PA", "AP", "LATERAL", "LL")
    blank_view: bool = False  # ViewPosition missing from the metadata


@dataclass
class PlannedStudy:
    index: int
    subject_index: int
    subject_id: int
    study_id: int
    split: str
    date: int
    time: float
    images: list[PlannedImage]
    findings: list[Finding]
    style: str = "full"


def _dicom_id(rng: np.random.Generator) -> str:
    hexes = rng.bytes(20).hex()
    return "-".join(hexes[i:i + 8] for i in range(0, 40, 8))


def _assign_splits(study_counts: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Patient-disjoint splits: shuffled patients fill test, then validate, by study share."""
    n = len(study_counts)
    total = int(study_counts.sum())
    splits = ["train"] * n
    order = rng.permutation(n)
    position = 0
    for name in ("test", "validate"):
        target = SPLIT_SHARES[name] * total
        taken = 0
        # keep at least one patient for train once there are three or more
        while position < n - 1 and (taken < target or (taken == 0 and n >= 3)):
            if taken > 0 and taken + study_counts[order[position]] > target * 1.5:
                break
            splits[order[position]] = name
            taken += int(study_counts[order[position]])
            position += 1
    return splits


def _fill_study(s: PlannedStudy, seed: int) -> None:
    """Draw the study's findings and its images (a frontal view, sometimes a lateral)."""
    srng = np.random.default_rng([seed, RNG_STUDY, s.index])
    s.findings = sample_findings(srng)
    if any(f.label == "Cardiomegaly" and f.value > 0 and f.words["grade"] != "subtle" for f in s.findings) \
            and srng.random() < 0.3:
        s.findings.append(Finding("Enlarged Cardiomediastinum", 1.0))
    devices = any(f.label == "Support Devices" for f in s.findings)
    portable = any(f.label == "Cardiomegaly" and f.value > 0 and
                   ("portable" in f.subtype or f.subtype.startswith("ap ")) for f in s.findings)
    frontal = "AP" if portable or srng.random() < (0.85 if devices else 0.4) else "PA"
    s.images.append(PlannedImage(_dicom_id(srng), frontal))
    if srng.random() < (LATERAL_SHARE_AP if frontal == "AP" else LATERAL_SHARE_PA):
        s.images.append(PlannedImage(_dicom_id(srng), pick(srng, ["LATERAL", "LL"], [0.7, 0.3])))
    s.images.sort(key=lambda im: im.dicom_id)


def _study_dates(counts: np.ndarray, rng: np.random.Generator):
    """(subject, StudyDate, StudyTime) of each study, subject by subject, dates increasing."""
    for subject, count in enumerate(counts):
        day = np.datetime64("2110-01-01") + int(rng.integers(0, 80 * 365))
        for _ in range(count):
            day = day + int(rng.integers(1, 400))
            hh, mm, ss, ms = rng.integers(0, 24), rng.integers(0, 60), rng.integers(0, 60), rng.integers(0, 1000)
            yield subject, int(str(day).replace("-", "")), float(f"{hh:02d}{mm:02d}{ss:02d}.{ms:03d}")


def _test_cohort(plan: list[PlannedStudy], test_studies: int, seed: int) -> list[PlannedStudy]:
    """`test_studies` more test studies of new patients, drawn like the others from a stream of
    their own, so the rest of the phantom keeps its bytes. Test images cost only inference:
    this is what gives the zero-shot and retrieval metrics sample sizes worth an interval."""
    if not test_studies:
        return []
    rng = np.random.default_rng([seed, _RNG_TEST_COHORT])
    n_subjects = max(1, round(test_studies / 3))
    owner = np.concatenate([np.arange(n_subjects), rng.integers(0, n_subjects, test_studies - n_subjects)])
    counts = np.bincount(owner, minlength=n_subjects)
    used_subjects, used_studies = {s.subject_id for s in plan}, {s.study_id for s in plan}
    subject_ids = [i for i in 10_000_000 + rng.choice(10_000_000, n_subjects + len(used_subjects), replace=False)
                   if i not in used_subjects][:n_subjects]
    study_ids = [i for i in 50_000_000 + rng.choice(10_000_000, test_studies + len(used_studies), replace=False)
                 if i not in used_studies][:test_studies]
    first_subject = max(s.subject_index for s in plan) + 1
    cohort: list[PlannedStudy] = []
    for k, date, time in _study_dates(counts, rng):
        cohort.append(PlannedStudy(
            index=len(plan) + len(cohort), subject_index=first_subject + k, subject_id=int(subject_ids[k]),
            study_id=int(study_ids[len(cohort)]), split="test", date=date, time=time, images=[], findings=[]))
    for s in cohort:
        _fill_study(s, seed)
    return cohort


def plan_studies(studies: int, seed: int, test_studies: int = 0) -> list[PlannedStudy]:
    rng = np.random.default_rng([seed, _RNG_PLAN])
    n_subjects = max(1, round(studies / 3))
    owner = np.concatenate([np.arange(n_subjects), rng.integers(0, n_subjects, studies - n_subjects)])
    counts = np.bincount(owner, minlength=n_subjects)
    subject_ids = np.sort(10_000_000 + rng.choice(10_000_000, n_subjects, replace=False))
    study_ids = 50_000_000 + rng.choice(10_000_000, studies, replace=False)
    splits = _assign_splits(counts, rng)

    plan: list[PlannedStudy] = []
    for s_index, date, time in _study_dates(counts, rng):
        plan.append(PlannedStudy(
            index=len(plan), subject_index=s_index, subject_id=int(subject_ids[s_index]),
            study_id=int(study_ids[len(plan)]), split=splits[s_index], date=date, time=time,
            images=[], findings=[]))
    plan.sort(key=lambda s: (s.subject_id, s.study_id))
    for i, s in enumerate(plan):
        s.index = i

    # Exact counts of the rare report styles, so even a small phantom has each one.
    n_none = max(1, round(NO_SECTIONS_SHARE * studies)) if studies >= 10 else 0
    n_imp = max(1, round(IMPRESSION_ONLY_SHARE * studies)) if studies >= 10 else 0
    order = rng.permutation(studies)
    for i in order[:n_none]:
        plan[i].style = "no_sections"
    for i in order[n_none:n_none + n_imp]:
        plan[i].style = "impression_only"

    for s in plan:
        _fill_study(s, seed)

    # Blank ViewPosition on a few images (only of ordinary studies, so the rare report
    # styles stay importable and testable).
    candidates = [im for s in plan if s.style == "full" for im in s.images]
    n_blank = max(1, round(BLANK_VIEW_SHARE * sum(len(s.images) for s in plan))) if len(candidates) >= 10 else 0
    for i in sorted(rng.choice(len(candidates), n_blank, replace=False)) if n_blank else []:
        candidates[i].blank_view = True
    return plan + _test_cohort(plan, test_studies, seed)
