// The cloud-film viewer: a stack viewer for a phone, in plain JavaScript (no framework, nothing
// from another origin). Slices come from the server already windowed and rendered as JPEG
// (/film/{token}/studies/.../frames/N/rendered); this script preloads them, nearest first,
// decodes them ahead of time and draws the current one on a canvas with zoom and pan.
(function () {
  "use strict";

  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs, ...kids) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids) node.append(kid);
    return node;
  };

  const M = JSON.parse($("#manifest").textContent);
  const base = M.base;
  const viewer = $("#viewer");
  const canvas = $("#view");
  const ctx = canvas.getContext("2d");
  const firstImg = $("#first");

  const PRELOAD_PARALLEL = 4;
  const state = {
    study: M.study,
    seriesIndex: 0,
    index: 0,
    win: null, // [center, width] or null for the image's own window
    zoom: 1,
    panX: 0,
    panY: 0,
    mode: "stack",
    drawn: 0, // how many times a slice was painted (tests and the bench read it)
    shownKey: "",
  };

  // ---- image cache and preloading -------------------------------------------------------

  const cache = new Map(); // url -> {img, ready, failed}
  let generation = 0;
  let queue = [];
  let inFlight = 0;

  function series() {
    return state.study.series[state.seriesIndex];
  }

  function sliceUrl(i, win) {
    const s = series();
    const [sop, frame] = s.images[i];
    let url = `${base}/studies/${state.study.uid}/series/${s.uid}/instances/${sop}/frames/${frame}/rendered`;
    if (win) url += `?window=${Math.round(win[0])},${Math.max(1, Math.round(win[1]))}`;
    return url;
  }

  // the slice at url, loaded and decoded once; ``existing`` adopts an <img> already in the page
  function load(url, onReady, existing) {
    let entry = cache.get(url);
    if (entry) {
      if (entry.ready || entry.failed) onReady && onReady(entry);
      else if (onReady) entry.waiters.push(onReady);
      return entry;
    }
    const img = existing || new Image();
    entry = { img, ready: false, failed: false, waiters: onReady ? [onReady] : [] };
    cache.set(url, entry);
    const settle = (ok) => {
      if (ok) entry.ready = true;
      else entry.failed = true;
      for (const w of entry.waiters.splice(0)) w(entry);
    };
    const decoded = () => (img.decode ? img.decode().then(() => settle(true), () => settle(true)) : settle(true));
    if (existing && img.complete && img.naturalWidth) {
      settle(true);
      return entry;
    }
    img.onload = decoded;
    img.onerror = () => settle(false);
    if (!existing) {
      img.decoding = "async";
      img.src = url;
    }
    return entry;
  }

  function preload() {
    // every slice of the series with the current window, nearest to the current one first
    generation += 1;
    const n = series().images.length;
    const order = [];
    for (let d = 0; d < n; d += 1) {
      if (state.index + d < n) order.push(state.index + d);
      if (d > 0 && state.index - d >= 0) order.push(state.index - d);
    }
    queue = order.map((i) => sliceUrl(i, state.win));
    pump(generation);
  }

  function pump(gen) {
    while (inFlight < PRELOAD_PARALLEL && queue.length && gen === generation) {
      const url = queue.shift();
      const cached = cache.get(url);
      if (cached && (cached.ready || cached.failed)) continue;
      inFlight += 1;
      load(url, () => {
        inFlight -= 1;
        updateLoaded();
        pump(generation);
      });
    }
  }

  function updateLoaded() {
    const s = series();
    let ready = 0;
    for (let i = 0; i < s.images.length; i += 1) {
      const e = cache.get(sliceUrl(i, state.win));
      if (e && e.ready) ready += 1;
    }
    viewer.dataset.loaded = String(ready);
  }

  // ---- drawing ------------------------------------------------------------------------------

  function resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(viewer.clientWidth * dpr));
    const h = Math.max(1, Math.round(viewer.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    paint();
  }

  let lastImg = null;

  function paint(img) {
    if (img) lastImg = img;
    img = lastImg;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height); // the viewer's background is black
    if (!img) return;
    const dpr = window.devicePixelRatio || 1;
    const fit = Math.min(canvas.width / img.naturalWidth, canvas.height / img.naturalHeight);
    const scale = fit * state.zoom;
    const w = img.naturalWidth * scale;
    const h = img.naturalHeight * scale;
    const x = (canvas.width - w) / 2 + state.panX * dpr;
    const y = (canvas.height - h) / 2 + state.panY * dpr;
    ctx.imageSmoothingEnabled = scale < 3;
    ctx.drawImage(img, x, y, w, h);
  }

  // paint a loaded slice and count it (tests and the bench read the count)
  function present(entry, key) {
    state.shownKey = key;
    state.drawn += 1;
    paint(entry.img);
    viewer.dataset.drawn = String(state.drawn);
    if (state.drawn === 1) {
      if (performance.mark) performance.mark("cloudfilm:first-draw");
      // the page's own <img> of the first slice goes once the canvas has been presented
      // (hidden in the same frame, it would never have been painted at all)
      requestAnimationFrame(() => requestAnimationFrame(() => viewer.classList.add("ready")));
    }
  }

  function show() {
    const s = series();
    const url = sliceUrl(state.index, state.win);
    const key = url;
    $("#slice").textContent = `${s.modality || ""} ${state.index + 1} / ${s.images.length}`;
    viewer.dataset.index = String(state.index);
    viewer.dataset.series = s.uid;
    const w = state.win || s.window;
    $("#wl").textContent = w ? `W ${Math.round(w[1])} L ${Math.round(w[0])}` : "";
    const dl = $("#dl-image");
    if (M.download) {
      dl.hidden = false;
      dl.href = url + (url.includes("?") ? "&" : "?") + "download=1";
    }
    load(url, (entry) => {
      if (entry.ready && sliceUrl(state.index, state.win) === key && state.shownKey !== key) {
        present(entry, key);
      }
    });
  }

  function go(i) {
    const n = series().images.length;
    const next = Math.max(0, Math.min(n - 1, i));
    if (next === state.index) return;
    state.index = next;
    show();
  }

  function setWindow(win, reload) {
    state.win = win;
    state.shownKey = "";
    show();
    if (reload) preload();
  }

  function resetView() {
    state.zoom = 1;
    state.panX = 0;
    state.panY = 0;
    paint();
  }

  // ---- series strip, studies, report ------------------------------------------------------

  function selectSeries(i) {
    state.seriesIndex = i;
    state.index = 0;
    state.win = $("#preset").value ? $("#preset").value.split(",").map(Number) : null;
    state.shownKey = "";
    lastImg = null;
    for (const b of document.querySelectorAll("#strip button")) {
      b.setAttribute("aria-current", String(Number(b.dataset.i) === i));
    }
    resetView();
    show();
    preload();
  }

  function buildStrip() {
    const strip = $("#strip");
    strip.replaceChildren();
    state.study.series.forEach((s, i) => {
      const b = el(
        "button",
        { type: "button", "data-i": String(i), "aria-current": String(i === state.seriesIndex) },
        el("img", { src: `${base}/series/${s.uid}/thumbnail`, alt: "", loading: "lazy" }),
        el("span", { text: `${s.modality} · ${s.description || "-"} · ${s.images.length}` }),
      );
      b.addEventListener("click", () => selectSeries(i));
      strip.append(b);
    });
  }

  function buildReport() {
    const box = $("#report");
    box.replaceChildren();
    if (!state.study.reports.length) return;
    box.append(el("h2", { text: "报告 Report" }));
    for (const r of state.study.reports) {
      const title = el("h3", { text: r.title || "报告 Report" });
      if (r.mutual_recognition) title.append(el("span", { class: "tag", text: "互认 Mutual recognition" }));
      box.append(title);
      if (r.text !== null) box.append(el("pre", { text: r.text }));
      else box.append(el("a", { href: r.url, target: "_blank", rel: "noopener", text: `${r.media_type} ↗` }));
    }
  }

  function showStudyHeader(h) {
    $("#pname").textContent = h.patient;
    $("#pinfo").textContent = `${h.age} ${h.sex}`;
    $("#sinfo").textContent = `${h.hospital} · ${h.date} · ${h.description || "-"}`;
    const zip = $("#dl-zip");
    zip.hidden = !M.download;
    zip.href = `${base}/studies/${h.uid}/download.zip`;
  }

  function openStudy(manifest) {
    state.study = manifest;
    state.seriesIndex = 0;
    showStudyHeader(manifest);
    buildStrip();
    buildReport();
    if (manifest.series.length) selectSeries(0);
  }

  function buildStudyPicker() {
    const pick = $("#study");
    if (M.studies.length < 2) return;
    pick.hidden = false;
    for (const s of M.studies) {
      pick.append(el("option", { value: s.uid, text: `${s.date} ${s.modalities.join("/")} ${s.description || ""} · ${s.hospital}` }));
    }
    pick.addEventListener("change", async () => {
      const r = await fetch(`${base}/studies/${pick.value}/manifest.json`, { credentials: "same-origin" });
      if (r.ok) openStudy(await r.json());
    });
  }

  // ---- input: pointer (touch, mouse, pen), wheel, keys -------------------------------------

  const pointers = new Map();
  let gesture = null;

  function midDist() {
    const [a, b] = [...pointers.values()];
    return {
      x: (a.x + b.x) / 2,
      y: (a.y + b.y) / 2,
      d: Math.hypot(a.x - b.x, a.y - b.y) || 1,
    };
  }

  function startGesture() {
    if (pointers.size >= 2) {
      const m = midDist();
      gesture = { kind: "pinch", x: m.x, y: m.y, d: m.d, zoom: state.zoom, panX: state.panX, panY: state.panY };
    } else if (pointers.size === 1) {
      const p = [...pointers.values()][0];
      const w = state.win || series().window || [40, 400];
      gesture = { kind: state.mode, x: p.x, y: p.y, index: state.index, panX: state.panX, panY: state.panY, win: w.slice() };
    } else {
      gesture = null;
    }
  }

  viewer.addEventListener("pointerdown", (ev) => {
    viewer.setPointerCapture(ev.pointerId);
    pointers.set(ev.pointerId, { x: ev.clientX, y: ev.clientY });
    startGesture();
  });

  viewer.addEventListener("pointermove", (ev) => {
    if (!pointers.has(ev.pointerId) || !gesture) return;
    pointers.set(ev.pointerId, { x: ev.clientX, y: ev.clientY });
    if (gesture.kind === "pinch" && pointers.size >= 2) {
      const m = midDist();
      state.zoom = Math.max(0.5, Math.min(10, gesture.zoom * (m.d / gesture.d)));
      state.panX = gesture.panX + (m.x - gesture.x);
      state.panY = gesture.panY + (m.y - gesture.y);
      paint();
      return;
    }
    const p = pointers.get(ev.pointerId);
    const dx = p.x - gesture.x;
    const dy = p.y - gesture.y;
    if (gesture.kind === "stack") {
      const n = series().images.length;
      const step = Math.max(3, Math.min(12, viewer.clientHeight / Math.max(n, 1)));
      go(gesture.index + Math.round(dy / step));
    } else if (gesture.kind === "pan") {
      state.panX = gesture.panX + dx;
      state.panY = gesture.panY + dy;
      paint();
    } else if (gesture.kind === "wl") {
      const [c, w] = gesture.win;
      const k = Math.max(w, 10) / 250;
      liveWindow([c + dy * k, Math.max(1, w + dx * k * 2)]);
    }
  });

  function endPointer(ev) {
    if (!pointers.delete(ev.pointerId)) return;
    if (gesture && gesture.kind === "wl" && pointers.size === 0 && state.win) {
      $("#preset").value = "";
      preload(); // the whole series again, with the window just chosen
    }
    startGesture();
  }
  viewer.addEventListener("pointerup", endPointer);
  viewer.addEventListener("pointercancel", endPointer);

  // free window/level while dragging: one request at a time, the latest window wins
  let wlBusy = false;
  let wlNext = null;
  function liveWindow(win) {
    state.win = win;
    $("#wl").textContent = `W ${Math.round(win[1])} L ${Math.round(win[0])}`;
    if (wlBusy) {
      wlNext = win;
      return;
    }
    wlBusy = true;
    const url = sliceUrl(state.index, win);
    load(url, (entry) => {
      wlBusy = false;
      if (entry.ready) present(entry, url);
      if (wlNext) {
        const w = wlNext;
        wlNext = null;
        liveWindow(w);
      }
    });
  }

  viewer.addEventListener(
    "wheel",
    (ev) => {
      ev.preventDefault();
      if (ev.ctrlKey || ev.metaKey) {
        state.zoom = Math.max(0.5, Math.min(10, state.zoom * Math.exp(-ev.deltaY / 300)));
        paint();
      } else {
        go(state.index + (ev.deltaY > 0 ? 1 : -1));
      }
    },
    { passive: false },
  );

  document.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
    const n = series().images.length;
    const keys = {
      ArrowDown: () => go(state.index + 1),
      ArrowRight: () => go(state.index + 1),
      ArrowUp: () => go(state.index - 1),
      ArrowLeft: () => go(state.index - 1),
      PageDown: () => go(state.index + 10),
      PageUp: () => go(state.index - 10),
      Home: () => go(0),
      End: () => go(n - 1),
      "+": () => { state.zoom = Math.min(10, state.zoom * 1.25); paint(); },
      "-": () => { state.zoom = Math.max(0.5, state.zoom / 1.25); paint(); },
      "0": resetView,
    };
    const fn = keys[ev.key];
    if (fn) {
      ev.preventDefault();
      fn();
    }
  });

  for (const b of document.querySelectorAll("#tools button[data-mode]")) {
    b.addEventListener("click", () => {
      state.mode = b.dataset.mode;
      for (const o of document.querySelectorAll("#tools button[data-mode]")) {
        o.setAttribute("aria-pressed", String(o === b));
      }
    });
  }
  $("#preset").addEventListener("change", (ev) => {
    const v = ev.target.value;
    setWindow(v ? v.split(",").map(Number) : null, true);
  });
  $("#reset").addEventListener("click", () => {
    $("#preset").value = "";
    resetView();
    setWindow(null, true);
  });

  // ---- the patient's own tools (their link only) -----------------------------------------

  function fmtTime(ts) {
    const d = new Date(ts * 1000);
    const p = (x) => String(x).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
  }

  async function api(path, opts) {
    const r = await fetch(`${base}/api/${path}`, { credentials: "same-origin", ...opts });
    const body = r.status === 204 ? null : await r.json();
    if (!r.ok) throw new Error((body && body.error) || `HTTP ${r.status}`);
    return body;
  }

  function section(title, id, fill) {
    const det = el("details", { id }, el("summary", { text: title }));
    const box = el("div");
    det.append(box);
    det.addEventListener("toggle", () => {
      if (det.open) fill(box).catch((e) => box.replaceChildren(el("p", { class: "flag", text: String(e.message || e) })));
    });
    return det;
  }

  function table(head, rows) {
    const t = el("table", {}, el("tr", {}, ...head.map((h) => el("th", { text: h }))));
    for (const r of rows) t.append(el("tr", {}, ...r.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: String(c) })))));
    return t;
  }

  async function fillLinks(box) {
    // the patient's links (each revocable), then the form that makes a new one
    const list = el("div");
    const refresh = async () => {
      const rows = (await api("links")).map((l) => {
        const revoke = el("button", { type: "button", text: "撤销 Revoke" });
        revoke.disabled = l.state !== "active";
        revoke.addEventListener("click", async () => {
          await api(`links/${l.id}`, { method: "DELETE" });
          await refresh();
        });
        return [fmtTime(Date.parse(l.created_at) / 1000), l.state, l.views, revoke];
      });
      list.replaceChildren(table(["创建 Created", "状态 State", "查看 Views", ""], rows));
    };
    const form = el("form", { id: "new-link" });
    const days = el("select", { name: "days" });
    for (const d of [1, 3, 7, 30]) days.append(el("option", { value: String(d), text: `${d} 天 days` }));
    const code = el("input", { type: "checkbox", name: "code", checked: true });
    const dl = el("input", { type: "checkbox", name: "download" });
    form.append(
      el("label", {}, "有效期 Valid for ", days),
      el("label", {}, code, " 提取码 Extraction code"),
    );
    if (M.download) form.append(el("label", {}, dl, " 允许下载 Allow download"));
    form.append(el("button", { type: "submit", text: "生成医生链接 Create a link for a doctor" }));
    const out = el("div", { id: "new-link-out" });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = { ttl_hours: Number(days.value) * 24, allow_download: dl.checked };
      if (code.checked) body.code = "auto";
      try {
        const l = await api("links", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
        out.replaceChildren(
          el("img", { class: "qr", src: l.qr_svg, alt: "QR" }),
          el("p", { class: "url", text: l.url }),
          l.code ? el("p", { text: `提取码 Code: ${l.code}` }) : "",
        );
        await refresh();
      } catch (e) {
        out.replaceChildren(el("p", { class: "flag", text: String(e.message || e) }));
      }
    });
    box.replaceChildren(list, form, out);
    await refresh();
  }

  async function fillHistory(box) {
    const rows = (await api("history")).map((h) => [
      `${h.day} ${fmtTime(h.last).slice(11)}`,
      { staff: `${h.hospital_name || h.hospital} ${h.role}`, you: "本人 you", "doctor link": "医生链接 doctor link", link: "其他链接 other link" }[h.who] || h.who,
      h.requests,
      h.break_glass ? el("span", { class: "flag glass", text: `紧急调阅 break-glass: ${h.reason}` }) : "",
    ]);
    box.replaceChildren(rows.length ? table(["时间 When", "谁 Who", "次数 Requests", ""], rows) : el("p", { text: "无 None" }));
  }

  function scopeText(studyUid) {
    if (!studyUid) return "全部检查 all studies";
    const s = M.studies.find((x) => x.uid === studyUid);
    return s ? `${s.date} ${s.modalities.join("/")} ${s.description || ""}` : "一次检查 one study";
  }

  async function fillConsents(box) {
    const grants = await api("consents");
    const rows = grants.map((g) => {
      const revoke = el("button", { type: "button", text: "撤销 Revoke" });
      revoke.disabled = !g.active;
      revoke.addEventListener("click", async () => {
        await api(`consents/${g.id}/revoke`, { method: "POST" });
        fillConsents(box);
      });
      return [(g.hospital_name || g.grantee_hospital) + (g.grantee_subject ? ` ${g.grantee_subject}` : ""), scopeText(g.study_uid), fmtTime(g.expires_at), g.active ? "有效 active" : "无效 inactive", revoke];
    });
    box.replaceChildren(rows.length ? table(["授权给 Granted to", "范围 Scope", "到期 Expires", "", ""], rows) : el("p", { text: "无 None" }));
  }

  const REQUEST_STATES = { approved: "已同意 approved", declined: "已拒绝 declined", expired: "已过期 expired" };

  async function fillRequests(box) {
    const rows = (await api("consent-requests")).map((q) => {
      const cell = el("span");
      if (q.state === "pending") {
        for (const [action, text] of [["approve", "同意 Approve"], ["decline", "拒绝 Decline"]]) {
          const b = el("button", { type: "button", class: action, text });
          b.addEventListener("click", async () => {
            await api(`consent-requests/${q.id}/${action}`, { method: "POST" });
            await fillRequests(box);
          });
          cell.append(b, " ");
        }
      } else cell.textContent = REQUEST_STATES[q.state] || q.state;
      return [fmtTime(q.created_at), q.hospital_name + (q.subject ? ` ${q.subject}` : ""), scopeText(q.study_uid), cell];
    });
    box.replaceChildren(rows.length ? table(["时间 When", "申请方 Asked by", "范围 Scope", ""], rows) : el("p", { text: "无 None" }));
  }

  function choices(name, options) {
    const sel = el("select", { name });
    for (const [value, text] of options) sel.append(el("option", { value, text }));
    return sel;
  }

  function studyChoice() {
    return choices("study", [["", "全部检查 All my studies"], ...M.studies.map((s) => [s.uid, scopeText(s.uid)])]);
  }

  function daysChoice() {
    return choices("days", [1, 7, 30, 90].map((d) => [String(d * 24), `${d} 天 days`]));
  }

  const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

  async function fillGrant(box) {
    const hospitals = await api("hospitals");
    const form = el("form", { id: "grant" });
    const hospital = choices("hospital", hospitals.map((h) => [h.id, h.name]));
    const subject = el("input", { type: "text", name: "subject", placeholder: "医生账号（可选）doctor's user (optional)" });
    const study = studyChoice();
    const days = daysChoice();
    form.append(
      el("label", {}, "医院 Hospital ", hospital),
      el("label", {}, "医生 Doctor ", subject),
      el("label", {}, "检查 Studies ", study),
      el("label", {}, "有效期 Valid for ", days),
      el("button", { type: "submit", text: "授权 Give consent" }),
    );
    const out = el("div", { id: "grant-out" });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = { hospital: hospital.value, ttl_hours: Number(days.value) };
      if (subject.value.trim()) body.subject = subject.value.trim();
      if (study.value) body.study_uid = study.value;
      try {
        const g = await post("consents", body);
        out.replaceChildren(el("p", { text: `已授权 Consent given: ${g.hospital_name}` }));
      } catch (e) {
        out.replaceChildren(el("p", { class: "flag", text: String(e.message || e) }));
      }
    });
    box.replaceChildren(form, out);
  }

  async function fillCode(box) {
    const form = el("form", { id: "consent-code" });
    const only = el("input", { type: "checkbox", name: "only" });
    const study = studyChoice();
    const days = daysChoice();
    form.append(
      el("p", { text: "医生输入授权码后，其医院可调阅您的检查。 A doctor who enters the code lets their hospital read your studies." }),
      el("label", {}, only, " 仅限输入的医生本人 Only that doctor"),
      el("label", {}, "检查 Studies ", study),
      el("label", {}, "有效期 Valid for ", days),
      el("button", { type: "submit", text: "显示授权码 Show a consent code" }),
    );
    const out = el("div", { id: "code-out" });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = { only_that_clinician: only.checked, ttl_hours: Number(days.value) };
      if (study.value) body.study_uid = study.value;
      try {
        const c = await post("consent-code", body);
        out.replaceChildren(
          el("p", { class: "code", text: c.code.replace(/(\d{4})(\d{4})/, "$1 $2") }),
          el("p", { text: `${Math.round(c.valid_s / 60)} 分钟内有效，仅可使用一次 Valid ${Math.round(c.valid_s / 60)} minutes, once` }),
        );
      } catch (e) {
        out.replaceChildren(el("p", { class: "flag", text: String(e.message || e) }));
      }
    });
    box.replaceChildren(form, out);
  }

  async function buildMine() {
    if (!M.self_service) return;
    const mine = $("#mine");
    mine.classList.add("mine");
    mine.hidden = false;
    mine.append(
      el("h2", { text: "我的 Mine" }),
      section("分享给医生 Share with a doctor", "links", fillLinks),
      section("访问记录 Who opened my studies", "history", fillHistory),
      section("授权管理 My consents", "consents", fillConsents),
    );
    // giving consent: only the patient's own link to all their studies may (the API says so)
    const me = await api("me");
    if (!me.may_give_consent) return;
    const pending = me.pending_requests;
    const asked = section(`授权申请 Consent requests${pending ? ` (${pending})` : ""}`, "requests", fillRequests);
    if (pending) asked.classList.add("pending");
    mine.append(
      asked,
      section("授权医院 Give consent", "grant", fillGrant),
      section("授权码 Consent code", "code", fillCode),
    );
  }

  // ---- start --------------------------------------------------------------------------------

  function start() {
    buildStudyPicker();
    buildMine().catch((e) => $("#mine").append(el("p", { class: "flag", text: String(e.message || e) })));
    showStudyHeader(state.study);
    buildStrip();
    buildReport();
    if (!state.study.series.length) return;
    // the first slice is already in the page (<img id="first">): reuse it rather than fetch again
    if (firstImg) load(sliceUrl(0, null), null, firstImg);
    new ResizeObserver(resize).observe(viewer);
    resize();
    show();
    preload();
  }

  // for tests and the bench: read-only state and a way to step slices
  window.cloudfilm = {
    state: () => ({
      study: state.study.uid,
      series: series() && series().uid,
      index: state.index,
      count: series() ? series().images.length : 0,
      window: state.win,
      zoom: state.zoom,
      drawn: state.drawn,
      loaded: Number(viewer.dataset.loaded || 0),
    }),
    go,
  };

  start();
})();
