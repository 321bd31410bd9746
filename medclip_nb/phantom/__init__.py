"""Deterministic phantom MIMIC-CXR-JPG dataset, for machines without the real data.

`generate_phantom(out)` writes the official MIMIC-CXR-JPG + reports layout:

    out/files/p10/p10000032/s50414267/<dicom_id>.jpg     8-bit grayscale radiographs
    out/files/p10/p10000032/s50414267.txt                free-text radiology report
    out/mimic-cxr-2.0.0-split.csv.gz                     patient-disjoint train/validate/test
    out/mimic-cxr-2.0.0-chexpert.csv.gz                  study-level CheXpert labels
    out/mimic-cxr-2.0.0-negbio.csv.gz                    the same labels under NegBio's name (one labeler here)
    out/mimic-cxr-2.0.0-metadata.csv.gz                  DICOM metadata (ViewPosition, ...)
    out/sentence-label.csv.gz                            every report sentence with its own labels (MedCLIP's
                                                         sentence-label table; not part of MIMIC-CXR)
    out/phantom.json                                     generator arguments and version

so the real importer (`medclip_nb.data.mimic.prepare_mimic`) reads it unchanged. Same seed, same
bytes: every random draw comes from numpy Generators seeded from (seed, stream, index), the
gzip headers carry no time or name, and JPEGs use a fixed quality.

The package, by pipeline step:

    findings.py       what a study shows (Finding, sample_findings) and its CheXpert labels
    anatomy.py        a patient's chest and its variation per study
    canvas.py         pixel grids in the patient's frame, hemithoraces, soft shapes
    render.py         the radiograph: anatomy of the frontal and lateral views, exposure (render_chest)
    draw_findings.py  one drawer per finding on the frontal view (and the support devices)
    reports.py        the radiology report, one sentence builder per finding (write_report)
    plan.py           patients, studies, splits, dates, report styles, images of each study
    tree.py           the MIMIC-CXR-JPG tree, its tables and the manifest (generate_phantom)
    chexpert_tree.py  the same phantom in CheXpert-v1.0-small's layout (generate_chexpert_phantom)
"""

from medclip_nb.phantom.anatomy import sample_anatomy, study_anatomy
from medclip_nb.phantom.chexpert_tree import chexpert_phantom_is_current, generate_chexpert_phantom
from medclip_nb.phantom.findings import Finding
from medclip_nb.phantom.render import render_chest
from medclip_nb.phantom.tree import generate_phantom, phantom_is_current, phantom_report_texts

__all__ = [
    "Finding",
    "chexpert_phantom_is_current",
    "generate_chexpert_phantom",
    "generate_phantom",
    "phantom_is_current",
    "phantom_report_texts",
    "render_chest",
    "sample_anatomy",
    "study_anatomy",
]
