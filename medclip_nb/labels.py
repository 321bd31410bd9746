"""CheXpert label order and the MedCLIP prompt vocabulary."""

from __future__ import annotations

# The 14 CheXpert labels in the column order of mimic-cxr-2.0.0-chexpert.csv.gz.
# Every `labels` vector in datasets.pkl follows this order. Values: 1.0 positive,
# 0.0 negative, -1.0 uncertain, NaN not mentioned (blank in the CSV).
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
NUM_LABELS = len(CHEXPERT_LABELS)
LABEL_INDEX = {name: i for i, name in enumerate(CHEXPERT_LABELS)}

# The five CheXpert competition classes used by the CheXpert-5x200 zero-shot task.
COMPETITION_TASKS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

# MedCLIP's prompt words for the five competition classes: severity x subtype x location.
PROMPT_VOCABULARY: dict[str, dict[str, list[str]]] = {
    "Atelectasis": {
        "severity": ["", "mild", "minimal"],
        "subtype": [
            "subsegmental atelectasis", "linear atelectasis", "trace atelectasis",
            "bibasilar atelectasis", "retrocardiac atelectasis", "bandlike atelectasis",
            "residual atelectasis",
        ],
        "location": [
            "at the mid lung zone", "at the upper lung zone", "at the right lung zone",
            "at the left lung zone", "at the lung bases", "at the right lung base",
            "at the left lung base", "at the bilateral lung bases", "at the left lower lobe",
            "at the right lower lobe",
        ],
    },
    "Cardiomegaly": {
        "severity": [""],
        "subtype": [
            "cardiac silhouette size is upper limits of normal",
            "cardiomegaly which is unchanged",
            "mildly prominent cardiac silhouette",
            "portable view of the chest demonstrates stable cardiomegaly",
            "portable view of the chest demonstrates mild cardiomegaly",
            "persistent severe cardiomegaly",
            "heart size is borderline enlarged",
            "cardiomegaly unchanged",
            "heart size is at the upper limits of normal",
            "redemonstration of cardiomegaly",
            "ap erect chest radiograph demonstrates the heart size is the upper limits of normal",
            "cardiac silhouette size is mildly enlarged",
            "mildly enlarged cardiac silhouette, likely left ventricular enlargement. "
            "other chambers are less prominent",
            "heart size remains at mildly enlarged",
            "persistent cardiomegaly with prominent upper lobe vessels",
        ],
        "location": [""],
    },
    "Consolidation": {
        "severity": ["", "increased", "improved", "appearance of"],
        "subtype": [
            "bilateral consolidation", "reticular consolidation", "retrocardiac consolidation",
            "patchy consolidation", "airspace consolidation", "partial consolidation",
        ],
        "location": [
            "at the lower lung zone", "at the upper lung zone", "at the left lower lobe",
            "at the right lower lobe", "at the left upper lobe", "at the right upper lobe",
            "at the right lung base", "at the left lung base",
        ],
    },
    "Edema": {
        "severity": ["", "mild", "improvement in", "persistent", "moderate", "decreased"],
        "subtype": ["pulmonary edema", "trace interstitial edema", "pulmonary interstitial edema"],
        "location": [""],
    },
    "Pleural Effusion": {
        "severity": ["", "small", "stable", "large", "decreased", "increased"],
        "location": ["left", "right", "tiny"],
        "subtype": ["bilateral pleural effusion", "subpulmonic pleural effusion"],
    },
}
