"""The Open-i (Indiana University chest X-ray) reports: where they come from and what one says.

Sources, in the order `find_reports` tries them:
- a path given by the user: a folder of the XML files (searched recursively), the
  `NLMCXR_reports.tgz` archive, or a torchxrayvision wheel (`.whl`, read with zipfile; nothing
  installed);
- none given: the copy inside the installed `torchxrayvision` package
  (`torchxrayvision/data/NLMCXR_reports.tgz`, found with importlib without importing it: its import
  loads torch). Nothing is ever downloaded; a missing source is one line naming what to install or
  pass.

Each file is untrusted XML: it is refused with one line naming it when it is larger than
MAX_XML_BYTES, holds a DOCTYPE or an entity declaration (the real files have neither: this rules
out entity expansion and external entities without another dependency), is not well-formed, or
lacks its report id. The schema (`<eCitation>` root, measured on the 3,955 real files):
`uId/@id` "CXR<n>"; `MedlineCitation/Article/Abstract/AbstractText` with `Label` COMPARISON,
INDICATION, FINDINGS, IMPRESSION (self-closing when empty); `MeSH/major` (manual codes) and
`MeSH/automatic` (machine-indexed phrases; there is no `<minor>`); `parentImage/@id` per image,
the PNG's name without `.png`. No element gives an image's view.
"""

from __future__ import annotations

import importlib.util
import io
import re
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from medclip_nb.errors import DataError
from medclip_nb.paths import resolve

SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
REPORT_SECTIONS = ("FINDINGS", "IMPRESSION")  # the training text, as for MIMIC-CXR
PACKAGED_TGZ = "torchxrayvision/data/NLMCXR_reports.tgz"
MAX_XML_BYTES = 1 << 20  # the real files are under 10 kB
MAX_ARCHIVE_BYTES = 1 << 30  # the .tgz inside a wheel (the real one is 1.1 MB)
MAX_FILES = 100_000
INSTALL_HINT = ("install the optional extra (pip install -e '.[iu]', which brings torchxrayvision) or pass "
                "--reports with the XML folder, NLMCXR_reports.tgz or a torchxrayvision wheel "
                "(pip download --no-deps torchxrayvision)")
_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclass
class IUReport:
    """One Open-i report (patient = report: the collection has one study per patient)."""

    uid: str  # "CXR1"
    number: int  # 1
    sections: dict[str, str]  # the four sections, "" when empty
    major: list[str] = field(default_factory=list)  # MeSH codes as written
    automatic: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)  # parentImage ids: <id>.png

    @property
    def text(self) -> str:
        """FINDINGS + IMPRESSION (either may be empty), as the training text."""
        return " ".join(self.sections[name] for name in REPORT_SECTIONS if self.sections.get(name))


def find_reports(reports=None) -> Path:
    """The report source to read: `reports` (a path) or the installed torchxrayvision's copy."""
    if reports is not None:
        path = resolve(reports)
        if not path.exists():
            raise DataError(f"Open-i reports not found: {path} ({INSTALL_HINT})")
        return path
    spec = importlib.util.find_spec("torchxrayvision")  # finds it without importing it (and torch)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"Open-i reports: torchxrayvision is not installed and no --reports was given; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "NLMCXR_reports.tgz"
    if not path.is_file():
        raise DataError(f"Open-i reports: the installed torchxrayvision has no {path}; {INSTALL_HINT}")
    return path


def read_reports(source: Path) -> list[IUReport]:
    """Every report of `source` (find_reports), sorted by report number; duplicates refused."""
    reports: dict[str, IUReport] = {}
    for name, data in _xml_files(source):
        report = parse_report(name, data)
        if report.uid in reports:
            raise DataError(f"Open-i report {name}: report id {report.uid} appears twice in {source}")
        reports[report.uid] = report
    if not reports:
        raise DataError(f"Open-i reports: no .xml report found in {source}")
    return sorted(reports.values(), key=lambda r: (r.number, r.uid))


def _xml_files(source: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each XML file of a folder, a .tgz/.tar(.gz) or a wheel."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*.xml") if p.is_file())
        _check_count(len(files), source)
        for path in files:
            if path.stat().st_size > MAX_XML_BYTES:
                raise DataError(f"Open-i report {path}: {path.stat().st_size} bytes, more than a report "
                                f"({MAX_XML_BYTES} allowed)")
            yield str(path), path.read_bytes()
    elif source.suffix in (".whl", ".zip"):
        yield from _tar_xml(_archive_in_wheel(source), f"{source}!{PACKAGED_TGZ}")
    else:
        try:
            archive = tarfile.open(source, mode="r:*")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"Open-i reports {source}: not a readable .tgz/.tar archive ({e})") from None
        yield from _tar_xml(archive, str(source))


def _archive_in_wheel(wheel: Path) -> tarfile.TarFile:
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(PACKAGED_TGZ)
            if info.file_size > MAX_ARCHIVE_BYTES:
                raise DataError(f"Open-i reports {wheel}: {PACKAGED_TGZ} is {info.file_size} bytes")
            data = zf.read(info)
    except KeyError:
        raise DataError(f"Open-i reports {wheel}: no {PACKAGED_TGZ} inside (not a torchxrayvision wheel)") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"Open-i reports {wheel}: not a readable wheel/zip ({e})") from None
    try:
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, EOFError) as e:
        raise DataError(f"Open-i reports {wheel}!{PACKAGED_TGZ}: not a readable archive ({e})") from None


def _tar_xml(archive: tarfile.TarFile, where: str) -> Iterator[tuple[str, bytes]]:
    """Regular .xml members only (links and folders are skipped), each at most MAX_XML_BYTES."""
    count = 0
    with archive:
        try:
            for member in archive:
                if not (member.isfile() and member.name.endswith(".xml")):
                    continue
                count += 1
                _check_count(count, where)
                if member.size > MAX_XML_BYTES:
                    raise DataError(f"Open-i report {where}:{member.name}: {member.size} bytes, more than a report")
                handle = archive.extractfile(member)
                yield f"{where}:{member.name}", handle.read() if handle is not None else b""
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise DataError(f"Open-i reports {where}: the archive is damaged ({e})") from None


def _check_count(count: int, where) -> None:
    if count > MAX_FILES:
        raise DataError(f"Open-i reports {where}: more than {MAX_FILES} XML files (the collection has 3,955)")


def parse_report(name: str, data: bytes) -> IUReport:
    """One report from the bytes of its XML file; DataError naming `name` when it cannot be used."""
    if len(data) > MAX_XML_BYTES:
        raise DataError(f"Open-i report {name}: {len(data)} bytes, more than a report ({MAX_XML_BYTES} allowed)")
    if _DECLARATION.search(data):
        raise DataError(f"Open-i report {name}: holds a DOCTYPE or entity declaration, which Open-i reports never "
                        f"have (refused: untrusted XML)")
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as e:
        raise DataError(f"Open-i report {name}: not well-formed XML ({e})") from None
    uid_element = root.find("uId")
    uid = (uid_element.get("id") or "").strip() if uid_element is not None else ""
    match = re.fullmatch(r"CXR(\d{1,9})", uid)
    if not match:
        raise DataError(f"Open-i report {name}: no report id (uId id=\"CXR<number>\"), found {uid[:40]!r}")
    sections = dict.fromkeys(SECTIONS, "")
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").strip().upper()
        if label in sections:
            text = " ".join("".join(element.itertext()).split())
            sections[label] = f"{sections[label]} {text}".strip()
    mesh = root.find("MeSH")
    major = [e.text.strip() for e in mesh.iter("major") if e.text and e.text.strip()] if mesh is not None else []
    automatic = [e.text.strip() for e in mesh.iter("automatic") if e.text and e.text.strip()] if mesh is not None \
        else []
    images = [(e.get("id") or "").strip() for e in root.findall("parentImage")]
    for image_id in images:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", image_id) or image_id.startswith("."):
            raise DataError(f"Open-i report {name}: image id {image_id[:60]!r} is not a file name")
    return IUReport(uid, int(match.group(1)), sections, major, automatic, images)
