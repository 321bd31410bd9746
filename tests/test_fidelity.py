"""docs/fidelity.md is generated from medclip_nb/study/fidelity.py and current; every test it names exists;
a row that names no test claims no equality; the README points to it."""

from __future__ import annotations

import ast

from medclip_nb.paths import repo_root
from medclip_nb.study.fidelity import ROWS, fidelity_markdown
from medclip_nb.study.paper import NOT_TRANSCRIBED, PAPER_NUMBERS, paper_table

ROOT = repo_root()


def test_docs_fidelity_is_current():
    assert (ROOT / "docs" / "fidelity.md").read_text(encoding="utf-8") == fidelity_markdown(), \
        "docs/fidelity.md is stale: run `make fidelity`"


def test_every_named_test_exists():
    for row in ROWS:
        if row.test is None:
            continue
        path, name = row.test.split("::")
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in names, f"{row.choice}: {row.test} does not exist"


def test_rows_without_a_test_claim_no_equality():
    for row in ROWS:
        if row.test is None:
            assert row.same.startswith(("not ", "differs")), row.choice


def test_readme_points_to_the_fidelity_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("Fidelity to MedCLIP", 1)[1].split("\n#", 1)[0]
    assert "docs/fidelity.md" in section


def test_the_paper_column_says_it_is_not_transcribed():
    entry = {"n": 10, "mean": {"accuracy": 0.5, "accuracy_std": 0.01, "macro_f1": 0.4, "macro_f1_std": 0.02}}
    table = paper_table({"CheXpert-5x200": entry, "MIMIC-5x200": entry}, real_chexpert=False, real_mimic=False)
    assert PAPER_NUMBERS == {}  # nothing transcribed: the source was not reachable (docs/fidelity.md)
    assert table.count(NOT_TRANSCRIBED) == 3 and "0.500 ± 0.010" in table and "| phantom |" in table
