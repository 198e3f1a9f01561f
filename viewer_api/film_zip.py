"""A study of a cloud-film link as a ZIP a CD-style viewer opens: its stored DICOM files under a
DICOMDIR (pydicom's FileSet: PS3.10 File-set, ``PT*/ST*/SE*/IM*`` file IDs).

``GET /film/{token}/studies/{study}/download.zip``  (when the link allows downloads)
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from pydicom.fileset import FileSet

from image_store.ports import ObjectStore
from image_store.records import InstanceQuery, InstanceSummary
from image_store.verified import read_verified
from viewer_api.context import blocking, services, uid_param
from viewer_api.errors import Forbidden, NotFound
from viewer_api.film_link import open_link_or_error
from viewer_api.film_manifest import study_in_link

logger = logging.getLogger(__name__)


def build_file_set(
    store: ObjectStore, instances: Sequence[InstanceSummary], root: Path
) -> list[Path]:
    """Write the instances (checksums verified) as a File-set with its DICOMDIR under ``root``;
    the files to put in the ZIP, DICOMDIR first. An instance pydicom cannot index goes in
    ``OTHER/`` outside the DICOMDIR."""
    staged = root / "staged"
    staged.mkdir()
    out = root / "out"
    fs = FileSet()
    fs.ID = "CLOUDFILM"
    others: list[Path] = []
    for n, inst in enumerate(instances):
        path = staged / f"{n:06d}.dcm"
        path.write_bytes(read_verified(store, inst.object_key, inst.sha256))
        try:
            fs.add(path)
        except (ValueError, KeyError, AttributeError) as exc:
            logger.info("instance %s left out of the DICOMDIR: %s", inst.sop_uid, exc)
            others.append(path)
    out.mkdir()
    try:
        if len(fs):
            fs.write(out)  # copies the staged files as they are: the stored bytes
    finally:
        stage = getattr(fs, "_stage", {}).get("t")  # pydicom's own temporary directory
        if isinstance(stage, tempfile.TemporaryDirectory):
            stage.cleanup()
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "DICOMDIR")
    if others:
        (out / "OTHER").mkdir()
        for p in others:
            target = out / "OTHER" / p.name
            shutil.move(p, target)
            files.append(target)
    head = [out / "DICOMDIR"] if (out / "DICOMDIR").exists() else []
    return head + files


async def download_zip(request: web.Request) -> web.StreamResponse:
    """The study's DICOM files as they are stored, under a DICOMDIR, streamed as a ZIP (stored,
    not deflated: the pixel data is mostly compressed already). The File-set is staged in a
    temporary directory that is removed when the response ends."""
    link = await open_link_or_error(request)
    if not link.allow_download:
        raise Forbidden("this link does not allow downloads")
    study_uid = uid_param(request, "study")
    study = await study_in_link(request, link, study_uid)
    svc = services(request)
    instances = await blocking(
        svc.index.find_instances, InstanceQuery(study_uid=study_uid), limit=100_000
    )
    if not instances:
        raise NotFound("the study has no instances")
    instances.sort(key=lambda i: (i.series_uid, i.instance_number or 0, i.sop_uid))
    tmp = Path(await blocking(tempfile.mkdtemp, prefix="cloudfilm-zip-"))
    try:
        files = await blocking(build_file_set, svc.store, instances, tmp)
        out = tmp / "out"
        date = study.study_date or "study"
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="cloudfilm-{date}.zip"',
                "Cache-Control": "no-store",
            }
        )
        await resp.prepare(request)
        sink = _Chunks()
        stamp = dt.datetime.now().timetuple()[:6]
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as zf:
            for path in files:
                info = zipfile.ZipInfo(path.relative_to(out).as_posix(), stamp)
                zf.writestr(info, await blocking(path.read_bytes))
                await resp.write(sink.take())
        await resp.write(sink.take())
        await resp.write_eof()
        return resp
    finally:
        await blocking(shutil.rmtree, tmp, True)


class _Chunks:
    """A write-only file for zipfile: what it writes is taken out between entries."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.written = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out
