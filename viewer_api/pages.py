"""The cloud-film page and its error pages: small, phone-first HTML with no external resources."""

from __future__ import annotations

import functools
import hashlib
import html
import json
import math
import time
from pathlib import Path
from typing import Any

from image_store.records import StudyRecord

CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""The message and code pages: their own small style inline, one script from /static (the
language toggle, static/lang.js), nothing else."""
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
FILM_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""The viewer page: its script and style come from /static only, no inline code at all; it may
frame only this origin (a PDF report of the link, shown inline)."""
FILM_HEADERS = {**PAGE_HEADERS, "Content-Security-Policy": FILM_CSP}

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@functools.cache
def static_file(name: str) -> tuple[bytes, str, str] | None:
    """(bytes, media type, short sha256) of a file of viewer_api/static, None when there is no
    such file; read once."""
    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data, STATIC_TYPES[path.suffix], hashlib.sha256(data).hexdigest()[:12]


def static_url(name: str) -> str:
    """/static/<name>?v=<content hash>: cached for a year, a new release changes the URL."""
    found = static_file(name)
    return f"/static/{name}?v={found[2] if found else 0}"


_STYLE = """
body{margin:0;font-family:system-ui,-apple-system,"PingFang SC","Noto Sans CJK SC",sans-serif;
background:#111;color:#eee}
header{padding:12px 16px;background:#1d2733}
h1{font-size:18px;margin:0 0 6px}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:0;font-size:14px}
dt{color:#9ab}dd{margin:0}
main{padding:12px;display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
figure{margin:0;background:#000;border-radius:6px;overflow:hidden}
img.thumb{width:100%;height:auto;display:block;aspect-ratio:1/1;object-fit:contain}
figcaption{font-size:12px;padding:6px;color:#ccd}
.msg{padding:40px 20px;text-align:center}
.msg form{display:flex;flex-direction:column;gap:10px;max-width:280px;margin:20px auto}
.msg input{font-size:24px;letter-spacing:6px;text-align:center;padding:8px;border-radius:6px;
border:1px solid #3d4d5c}
.msg button{font-size:16px;padding:10px;border-radius:6px;border:0;background:#1f6feb;color:#fff}
.err{color:#ff7b72}
html.js:not(.en) [lang="en"]{display:none}
html.js.en [lang="zh-CN"]{display:none}
#lang{position:absolute;top:8px;right:8px;min-width:44px;min-height:44px;font-size:14px;
border-radius:8px;border:1px solid #3d4d5c;background:#21262d;color:#eee}
"""


def mask_name(name: str) -> str:
    """A name as the page may show it: first and last character kept, the middle masked.

    Uses the ideographic form when the PN value has one (``Zhang^San=张^三`` -> ``张*``).
    """
    groups = name.split("=")
    shown = groups[1] if len(groups) > 1 and groups[1] else groups[0]
    letters = "".join(" " if c == "^" else c for c in shown).strip()
    letters = "".join(letters.split(" ")) if any(ord(c) > 0x2E80 for c in letters) else letters
    if len(letters) <= 1:
        return "*"  # a one-character name would be shown whole
    if len(letters) == 2:
        return letters[0] + "*"
    return letters[0] + "*" * (len(letters) - 2) + letters[-1]


def _date(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else d


_MESSAGE_HEAD = f'<style>{_STYLE}</style><script src="{static_url("lang.js")}" defer></script>'
"""The message pages' head: the inline style and the language toggle's script. Without the
script both languages show."""
_LANG_BUTTON = '<button type="button" id="lang" aria-label="Language">EN</button>'


def _doc(title: str, body: str, head: str = "") -> str:
    """A page: its own ``head`` elements, or the small inline style of the message pages."""
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1,viewport-fit=cover">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel="icon" href="{static_url("favicon.svg")}" type="image/svg+xml">'
        f"{head or _MESSAGE_HEAD}</head>"
        f"<body>{body}</body></html>"
    )


def age_of(birth_date: str, on: str) -> str:
    """Age at the study as the page shows it ('45岁 45 y', '7月 7 mo'), '' when unknown."""
    if not (len(birth_date) == 8 and len(on) == 8 and birth_date.isdigit() and on.isdigit()):
        return ""
    by, bm, bd = int(birth_date[:4]), int(birth_date[4:6]), int(birth_date[6:])
    oy, om, od = int(on[:4]), int(on[4:6]), int(on[6:])
    months = (oy - by) * 12 + (om - bm) - (1 if od < bd else 0)
    if months < 0:
        return ""
    return f"{months // 12}岁 {months // 12} y" if months >= 12 else f"{months}月 {months} mo"


def study_header(study: StudyRecord, names: dict[str, str] | None = None) -> dict[str, object]:
    """What the page shows of a study and its patient: the name masked, nothing else personal."""
    p = study.patient
    return {
        "uid": study.study_uid,
        "date": _date(study.study_date),
        "description": study.study_description,
        "modalities": list(study.modalities),
        "hospital": (names or {}).get(study.hospital, study.hospital),
        "patient": mask_name(p.name),
        "sex": {"M": "男 M", "F": "女 F"}.get(p.sex, p.sex or "-"),
        "age": age_of(p.birth_date, study.study_date),
        "images": study.number_of_instances,
    }


def _json_script(obj: object) -> str:
    """JSON safe inside a <script type="application/json"> element (no '<' at all)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


OG_TITLE = "云胶片 Cloud film"
OG_DESCRIPTION = (
    "医学影像检查，点击查看图像和报告 A medical imaging study: open to see images and report"
)
"""What a chat preview of a link shows: nothing about the patient, the hospital or the study."""


def _first_slice_url(manifest: dict[str, Any]) -> str:
    study = manifest["study"]
    series = study["series"]
    if not series:
        return ""
    s = series[study["main"]]
    sop, frame = s["images"][study["start"]]
    return (
        f"{manifest['base']}/studies/{study['uid']}/series/{s['uid']}/instances/{sop}"
        f"/frames/{frame}/rendered"
    )


_TOOLS = (
    ("stack", "翻页", "Stack"),
    ("pan", "平移", "Pan"),
    ("wl", "窗宽窗位", "W/L"),
    ("length", "测距", "Length"),
    ("angle", "角度", "Angle"),
    ("roi", "椭圆ROI", "Ellipse"),
    ("rect", "矩形ROI", "Rectangle"),
    ("probe", "CT值", "Probe"),
)


def _bi(zh: str, en: str) -> str:
    """A label in both languages; the page shows the Chinese one unless English is chosen."""
    return f'<span lang="zh-CN">{html.escape(zh)}</span><span lang="en">{html.escape(en)}</span>'


def film_page(study: StudyRecord, names: dict[str, str], manifest: dict[str, Any]) -> str:
    """The viewer: header, the main series' middle slice as a plain <img> (painted before any
    script runs, with a progress bar that moves before the script does), the canvas the script
    draws on, tools, the report, the series strip and the patient's own tools. The manifest
    travels in the page, so the first image needs no other request than its own."""
    e = html.escape
    head = study_header(study, names)
    first = _first_slice_url(manifest)
    tools = "".join(
        f'<button type="button" data-mode="{m}" aria-pressed="{str(m == "stack").lower()}">'
        f"{_bi(zh, en)}</button>"
        for m, zh, en in _TOOLS
    )
    body = (
        '<div id="progress" role="progressbar" aria-label="加载 Loading"><span></span></div>'
        '<header id="hdr"><div class="who">'
        f'<b id="pname">{e(str(head["patient"]))}</b> <span id="pinfo">{e(str(head["age"]))} '
        f"{e(str(head['sex']))}</span></div>"
        f'<div class="where" id="sinfo">{e(str(head["hospital"]))} · {e(str(head["date"]))} · '
        f"{e(study.study_description) or '-'}</div>"
        '<div class="hbtn"><button type="button" id="lang" aria-label="Language">EN</button>'
        f'<button type="button" id="copy">{_bi("复制链接", "Copy link")}</button>'
        f'<button type="button" id="share">{_bi("分享", "Share")}</button></div>'
        "</header>"
        '<div id="studies" hidden></div>'
        '<section id="viewer" tabindex="0" aria-label="图像 Image">'
        + (f'<img id="first" elementtiming="first-image" alt="" src="{e(first)}">' if first else "")
        + '<canvas id="view"></canvas>'
        '<div id="overlay"><span id="slice"></span><span id="note"></span><span id="wl"></span>'
        "</div></section>"
        f'<nav id="tools">{tools}'
        f'<button type="button" id="reset">{_bi("复位", "Reset")}</button></nav>'
        '<nav id="presets" aria-label="窗 Window"></nav>'
        '<section id="report"></section>'
        '<div id="strip"></div>'
        '<nav id="downloads">'
        f'<a id="dl-image" hidden download>{_bi("下载图像", "Image")} JPEG</a>'
        f'<a id="dl-zip" hidden download>{_bi("下载", "Download")} DICOM ZIP</a></nav>'
        '<section id="mine" hidden></section>'
        f'<script type="application/json" id="manifest">{_json_script(manifest)}</script>'
    )
    assets = (
        f'<meta property="og:title" content="{e(OG_TITLE)}">'
        f'<meta property="og:description" content="{e(OG_DESCRIPTION)}">'
        '<meta property="og:type" content="website">'
        f'<link rel="stylesheet" href="{static_url("film.css")}">'
        f'<script src="{static_url("film.js")}" data-worker="{static_url("values.js")}" defer>'
        "</script>"
    )
    return _doc(OG_TITLE, body, assets)


def code_page(
    base: str,
    locked: bool,
    *,
    tries_left: int | None = None,
    until: float | None = None,
    error: str = "",
) -> str:
    """The page asking for the extraction code; with the tries left after a wrong one, or the
    time the lockout ends."""
    e = html.escape
    if locked:
        mins = "" if until is None else str(max(1, math.ceil((until - time.time()) / 60)))
        zh = f"（{mins} 分钟后）" if mins else ""
        en = f" (in {mins} min)" if mins else ""
        msg = (
            f'<p class="err" id="locked">尝试次数过多，请稍后再试{zh}。'
            f"Too many wrong codes: try again later{en}.</p>"
        )
        form = ""
    else:
        msg = ""
        if tries_left is not None:
            msg = (
                f'<p class="err" id="wrong">提取码错误，还可尝试 {tries_left} 次。'
                f"Wrong code: {tries_left} tries left.</p>"
            )
        elif error:
            msg = '<p class="err">请输入 4-6 位数字。Enter 4 to 6 digits.</p>'
        form = (
            f'<form method="post" action="{e(base)}/code">'
            '<label for="code">提取码 Extraction code</label>'
            '<input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" '
            'pattern="[0-9]{4,6}" maxlength="6" required autofocus>'
            '<button type="submit">查看 Open</button></form>'
        )
    body = f'<div class="msg"><h1>云胶片 Cloud film</h1>{msg}{form}</div>'
    return _doc("提取码 Extraction code", body)


MESSAGES = {
    "invalid": ("链接无效", "请检查链接是否完整。", "Invalid link", "This link is not valid."),
    "expired": (
        "链接已过期",
        "请联系医院重新获取链接。",
        "Link expired",
        "This link has expired. Ask the hospital for a new one.",
    ),
    "revoked": (
        "链接已被撤销",
        "请联系医院或分享人。",
        "Link revoked",
        "This link was revoked. Ask the hospital or the person who shared it.",
    ),
    "missing": (
        "检查不存在",
        "该链接的检查已不可用。",
        "Study not found",
        "The study of this link is no longer available.",
    ),
    "blocked": (
        "链接已锁定",
        "提取码错误次数过多，链接已锁定，请联系医院重新获取。",
        "Link blocked",
        "Too many wrong extraction codes were entered: this link is blocked. Ask the hospital "
        "for a new one.",
    ),
}
"""Each closed link's page: (title, advice) in Chinese, then in English."""


def message_page(kind: str) -> str:
    """A closed link's page: what happened and what to do, in Chinese first; the language
    button (static/lang.js) switches to English and remembers the choice, as on the film page."""
    zh_title, zh_advice, en_title, en_advice = (html.escape(t) for t in MESSAGES[kind])
    body = (
        f'<div class="msg">{_LANG_BUTTON}'
        f'<h1><span lang="zh-CN">{zh_title}</span><span lang="en">{en_title}</span></h1>'
        f'<p lang="zh-CN">{zh_advice}</p><p lang="en">{en_advice}</p></div>'
    )
    return _doc(zh_title, body)
