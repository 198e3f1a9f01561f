"""The cloud-film page and its error pages: small, phone-first HTML with no external resources."""

from __future__ import annotations

import html
from collections.abc import Sequence

from image_store.records import SeriesRecord, StudyRecord

CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

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


def _doc(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def film_page(token: str, study: StudyRecord, series: Sequence[SeriesRecord]) -> str:
    e = html.escape
    p = study.patient
    sex = {"M": "男 M", "F": "女 F"}.get(p.sex, e(p.sex) or "-")
    figures = "".join(
        f'<figure><img class="thumb" loading="lazy" alt="{e(s.modality)} {e(s.series_description)}"'
        f' src="/film/{e(token)}/series/{e(s.series_uid)}/thumbnail">'
        f"<figcaption>{e(s.modality)} · {e(s.series_description) or '-'} · "
        f"{s.number_of_instances} 幅 images</figcaption></figure>"
        for s in series
    )
    body = (
        "<header><h1>云胶片 Cloud film</h1><dl>"
        f"<dt>患者 Patient</dt><dd>{e(mask_name(p.name))}</dd>"
        f"<dt>性别 Sex</dt><dd>{sex}</dd>"
        f"<dt>检查日期 Date</dt><dd>{e(_date(study.study_date))}</dd>"
        f"<dt>医院 Hospital</dt><dd>{e(study.hospital)}</dd>"
        f"<dt>检查 Study</dt><dd>{e(study.study_description) or '-'} "
        f"({e(', '.join(study.modalities))})</dd>"
        f"</dl></header><main>{figures}</main>"
    )
    return _doc("云胶片 Cloud film", body)


MESSAGES = {
    "invalid": ("链接无效", "This link is not valid."),
    "expired": ("链接已过期", "This link has expired. Ask the hospital for a new one."),
    "revoked": ("链接已被撤销", "This link was revoked."),
    "missing": ("检查不存在", "The study of this link is no longer available."),
}


def message_page(kind: str) -> str:
    zh, en = MESSAGES[kind]
    return _doc(zh, f'<div class="msg"><h1>{html.escape(zh)}</h1><p>{html.escape(en)}</p></div>')
