"""A study as the cloud-film viewer loads it: its series with their images, geometry, windows
and presets, which series to open first, and its reports.

``GET /film/{token}/studies/{study}/manifest.json``

The rules (which series is the main one, which presets a series gets, what a series' pixel
spacing means) are pure functions of the index's records and DICOM JSON; the handlers only fetch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from image_store.records import InstanceQuery, InstanceSummary, SeriesQuery, StudyRecord
from image_store.state.records import ShareLink
from viewer_api.context import blocking, hospital_names, services, uid_param
from viewer_api.film_link import LinkClosed, as_http_error, open_link_or_error, study_of_link
from viewer_api.film_reports import study_reports
from viewer_api.pages import study_header

Preset = dict[str, Any]

CT_WINDOWS: dict[str, tuple[str, float, float]] = {
    "lung": ("肺窗 Lung", -600, 1500),
    "mediastinum": ("纵隔窗 Mediastinum", 50, 350),
    "bone": ("骨窗 Bone", 400, 1800),
    "brain": ("脑窗 Brain", 40, 80),
    "subdural": ("硬膜下 Subdural", 75, 215),
    "abdomen": ("腹窗 Abdomen", 40, 400),
    "liver": ("肝窗 Liver", 60, 160),
}
"""CT windows in HU (center, width)."""

_HEAD = ("HEAD", "BRAIN", "SKULL", "NECK", "FACE", "SINUS", "IAC", "ORBIT")
_CHEST = ("CHEST", "LUNG", "THORAX", "HEART", "CHESTABDOMEN", "CHEST_ABDOMEN")
_ABDOMEN = ("ABDOMEN", "PELVIS", "LIVER", "KIDNEY", "ABDOMENPELVIS")
_BONES = ("SPINE", "CSPINE", "TSPINE", "LSPINE", "EXTREMITY", "KNEE", "HIP", "SHOULDER")
_CT_BY_BODY_PART: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (_HEAD, ("brain", "subdural", "bone")),
    (_CHEST, ("lung", "mediastinum", "bone")),
    (_ABDOMEN, ("abdomen", "liver", "bone")),
    (_BONES, ("bone", "abdomen")),
)
_CT_UNKNOWN = ("lung", "mediastinum", "abdomen", "bone", "brain")


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What a series' first image says about the whole series (its DICOM JSON)."""

    localizer: bool
    windows: tuple[tuple[float, float, str], ...]  # (center, width, explanation)
    spacing: tuple[float, float] | None  # (row, column) mm
    spacing_kind: str  # "pixel" (patient plane), "imager" (detector plane) or "" (none)


def _values(obj: dict[str, Any], tag: str) -> list[Any]:
    found = obj.get(tag, {}).get("Value")
    return found if isinstance(found, list) else []


def _spacing(values: list[Any]) -> tuple[float, float] | None:
    if len(values) == 2 and all(isinstance(v, int | float) and 0 < v < 1000 for v in values):
        return float(values[0]), float(values[1])
    return None


def series_facts(obj: dict[str, Any]) -> SeriesFacts:
    """The facts of one instance's DICOM JSON: Image Type, windows, pixel spacing (Pixel
    Spacing, else Imager Pixel Spacing, which measures at the detector: uncalibrated)."""
    image_type = [str(v).upper() for v in _values(obj, "00080008")]
    centers, widths = _values(obj, "00281050"), _values(obj, "00281051")
    notes = _values(obj, "00281055")
    windows = tuple(
        (float(c), float(w), str(notes[i]) if i < len(notes) and notes[i] else "")
        for i, (c, w) in enumerate(zip(centers, widths, strict=False))
        if isinstance(c, int | float) and isinstance(w, int | float) and w > 0
    )
    pixel = _spacing(_values(obj, "00280030"))
    imager = _spacing(_values(obj, "00181164"))
    kind = "pixel" if pixel else "imager" if imager else ""
    return SeriesFacts("LOCALIZER" in image_type, windows, pixel or imager, kind)


def presets_for(
    modality: str, body_part: str, windows: tuple[tuple[float, float, str], ...]
) -> list[Preset]:
    """The window presets a series offers: CT gets the HU windows that suit its body part; any
    other modality gets the image's own windows and an automatic one (the script computes it
    from the pixel values), never CT windows."""
    if modality == "CT":
        part = body_part.upper().replace(" ", "")
        names = next((n for parts, n in _CT_BY_BODY_PART if part in parts), _CT_UNKNOWN)
        return [
            {"id": n, "label": CT_WINDOWS[n][0], "window": [CT_WINDOWS[n][1], CT_WINDOWS[n][2]]}
            for n in names
        ]
    out: list[Preset] = [{"id": "auto", "label": "自动 Auto", "window": None}]
    for i, (c, w, note) in enumerate(windows[:4]):
        label = note.title() if note else f"窗{i + 1} Window {i + 1}"
        out.append({"id": f"image{i + 1}", "label": label, "window": [c, w]})
    return out


def main_series(series: list[dict[str, Any]]) -> int:
    """Index of the series to open first: the one with the most images among those that are
    not localizers (Image Type LOCALIZER, or a single image beside longer series); the first
    such series on a tie; 0 for an empty list."""
    if not series:
        return 0
    longest = max(len(s["images"]) for s in series)

    def skipped(s: dict[str, Any]) -> bool:
        return bool(s["localizer"]) or (len(s["images"]) == 1 and longest > 1)

    pool = [i for i, s in enumerate(series) if not skipped(s)] or list(range(len(series)))
    return max(pool, key=lambda i: (len(series[i]["images"]), -i))


def _first_facts(index: Any, study_uid: str, sop_uids: tuple[str, ...]) -> dict[str, SeriesFacts]:
    if not sop_uids:
        return {}
    out: dict[str, SeriesFacts] = {}
    for text in index.instance_metadata(InstanceQuery(study_uid=study_uid, sop_uids=sop_uids)):
        obj = json.loads(text)
        sop = (_values(obj, "00080018") or [""])[0]
        out[str(sop)] = series_facts(obj)
    return out


def _image_key(i: InstanceSummary) -> tuple[bool, int, str]:
    return (i.instance_number is None, i.instance_number or 0, i.sop_uid)


async def study_manifest(
    request: web.Request, study: StudyRecord, names: dict[str, str]
) -> dict[str, Any]:
    """A study's series (in series-number order) with their images (instance order, one entry
    per frame), geometry, windows and presets, the series and image to open first (``main``,
    ``start``: the main series' middle image) and the reports: everything the viewer needs in
    one object."""
    svc = services(request)
    series = await blocking(
        svc.index.find_series, SeriesQuery(study_uid=study.study_uid), limit=1000
    )
    series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
    instances = await blocking(
        svc.index.find_instances, InstanceQuery(study_uid=study.study_uid), limit=100_000
    )
    by_series: dict[str, list[InstanceSummary]] = {}
    for inst in instances:
        if inst.rows and inst.columns:  # an image; SRs, PDFs and the like have no slices
            by_series.setdefault(inst.series_uid, []).append(inst)
    for insts in by_series.values():
        insts.sort(key=_image_key)
    firsts = tuple(v[0].sop_uid for v in by_series.values())
    facts = await blocking(_first_facts, svc.index, study.study_uid, firsts)
    out: list[dict[str, Any]] = []
    for s in series:
        found = by_series.get(s.series_uid)
        if not found:
            continue
        insts = found
        f = facts.get(insts[0].sop_uid, SeriesFacts(False, (), None, ""))
        out.append(
            {
                "uid": s.series_uid,
                "modality": s.modality,
                "number": s.series_number,
                "description": s.series_description,
                "body_part": s.body_part,
                "localizer": f.localizer,
                "window": [f.windows[0][0], f.windows[0][1]] if f.windows else None,
                "presets": presets_for(s.modality, s.body_part, f.windows),
                "spacing": list(f.spacing) if f.spacing else None,
                "spacing_kind": f.spacing_kind,
                "rows": insts[0].rows,
                "columns": insts[0].columns,
                "images": [
                    [i.sop_uid, n] for i in insts for n in range(1, (i.number_of_frames or 1) + 1)
                ],
            }
        )
    main = main_series(out)
    return {
        **study_header(study, names),
        "series": out,
        "main": main,
        "start": len(out[main]["images"]) // 2 if out else 0,
        "reports": await study_reports(request, study),
    }


async def study_in_link(request: web.Request, link: ShareLink, study_uid: str) -> StudyRecord:
    """The study if the link opens it, else the link's JSON error."""
    try:
        return await study_of_link(request, link, study_uid)
    except LinkClosed as err:
        raise as_http_error(err) from None


async def manifest(request: web.Request) -> web.Response:
    link = await open_link_or_error(request)
    study_uid = uid_param(request, "study")
    study = await study_in_link(request, link, study_uid)
    body = await study_manifest(request, study, await hospital_names(request))
    return web.json_response(body, dumps=lambda o: json.dumps(o, ensure_ascii=False))
