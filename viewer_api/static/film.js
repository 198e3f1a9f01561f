// The cloud-film viewer: a stack viewer for a phone, in plain JavaScript (no framework, nothing
// from another origin). The first slice is painted from a server-rendered JPEG already in the
// page; then each grey slice's stored values arrive (.../frames/N/values: losslessly packed,
// gzipped; kept compressed, the slices near the current one decoded by a worker, static/values.js)
// and the script windows them itself, so window/level, presets, the value probe, measurements
// (length, angle, ellipse and rectangle ROI) and zoom (smooth interpolation) need no server
// round trip. Colour images and images without values keep the server-rendered JPEGs. Every
// label is in Chinese and English; the language button switches them (kept in localStorage).
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
  // a label in both languages; CSS shows one (Chinese unless English was chosen)
  const bi = (zh, en) => {
    const span = el("span");
    span.append(el("span", { lang: "zh-CN", text: zh }), el("span", { lang: "en", text: en }));
    return span;
  };
  const isEn = () => document.documentElement.classList.contains("en");
  // a server label in both languages ("初步报告 Preliminary", "45岁 45 y"), shown as one
  const pair = (text) => {
    const m = /^(\S*[\u3400-\u9fff]\S*)\s+(.+)$/.exec(text || "");
    return m ? bi(m[1], m[2]) : document.createTextNode(text || "");
  };
  // an <option> holds no markup: its text is swapped when the language changes (data-zh/en)
  const opt = (value, zh, en) => {
    const o = el("option", { value, "data-zh": zh, "data-en": en });
    o.textContent = isEn() ? en : zh;
    return o;
  };

  const M = JSON.parse($("#manifest").textContent);
  const base = M.base;
  const viewer = $("#viewer");
  const canvas = $("#view");
  const ctx = canvas.getContext("2d");
  const firstImg = $("#first");

  const PARALLEL = 4;
  const state = {
    study: M.study,
    seriesIndex: 0,
    index: 0,
    win: null, // [center, width], or null for the series' own window
    preset: "",
    zoom: 1,
    panX: 0,
    panY: 0,
    mode: "stack",
    drawn: 0, // how many times a slice was painted (tests and the bench read it)
    shownKey: "",
    marks: [], // measurements on the current slice (cleared when the slice changes)
    pending: null, // a measurement being drawn
  };

  function series() {
    return state.study.series[state.seriesIndex];
  }

  function frameKey(i) {
    const [sop, frame] = series().images[i];
    return `${series().uid}/${sop}/${frame}`;
  }

  function framePath(i) {
    const s = series();
    const [sop, frame] = s.images[i];
    return `${base}/studies/${state.study.uid}/series/${s.uid}/instances/${sop}/frames/${frame}`;
  }

  function sliceUrl(i, win) {
    let url = `${framePath(i)}/rendered`;
    if (win) url += `?window=${Math.round(win[0])},${Math.max(1, Math.round(win[1]))}`;
    return url;
  }

  // ---- stored values: fetched, unpacked (median edge predictor, zigzag byte planes) ---------
  //
  // A phone cannot hold a long series decoded (300 CT slices are 157 MB of 16-bit values): each
  // slice is kept as it came (gzip, about a third of raw) and only the slices within WINDOW of
  // the current one are kept decoded; scrolling decodes the ones coming into the window and
  // drops the ones leaving it (their buffers are reused).

  const WINDOW = 32;
  const packed = new Map(); // frame key -> the slice's gzip bytes as sent
  const values = new Map(); // frame key -> {rows, cols, u, slope, intercept, offset, mono1}: decoded
  const unpacking = new Map(); // frame key -> the promise of its decoded values
  const spare = []; // Uint16Arrays of slices that left the window, for the next ones
  const noValues = new Set(); // series whose images have no values (colour): JPEG only
  let keyIndex = new Map(); // frame key -> slice index, for the current series


  function inWindow(key) {
    const i = keyIndex.get(key);
    return i !== undefined && Math.abs(i - state.index) <= WINDOW;
  }

  const decoding = { n: 0, ms: 0 }; // slices decoded, and the worker's time (the bench reads it)

  // slices are decoded in a worker (static/values.js), off the thread that paints and scrolls
  // (two where the phone has the cores for it, each taking every other slice)
  const workerUrl = $("script[data-worker]").dataset.worker;
  const workers = [new Worker(workerUrl)];
  if ((navigator.hardwareConcurrency || 1) >= 4) workers.push(new Worker(workerUrl));
  let nextWorker = 0;
  const waiting = new Map(); // frame key -> the resolve of its decode()
  const decoded = (ev) => {
    const { key, v, ms } = ev.data;
    const resolve = waiting.get(key);
    waiting.delete(key);
    if (v) {
      decoding.ms += ms;
      decoding.n += 1;
    }
    if (v && inWindow(key)) {
      values.set(key, v);
      if (resolve) resolve(v);
      return;
    }
    if (v && spare.length < 8) spare.push(v.u); // it left the window meanwhile
    if (resolve) resolve(null);
  };
  for (const w of workers) w.onmessage = decoded;

  // the decoded values of a fetched slice (null once it has left the window)
  function decode(key) {
    if (values.has(key)) return Promise.resolve(values.get(key));
    let pending = unpacking.get(key);
    if (pending) return pending;
    const gz = packed.get(key);
    if (!gz) return Promise.resolve(null);
    pending = new Promise((resolve) => waiting.set(key, resolve)).finally(() => unpacking.delete(key));
    unpacking.set(key, pending);
    const u = spare.pop(); // a buffer to decode into, handed over (not copied)
    nextWorker = (nextWorker + 1) % workers.length;
    workers[nextWorker].postMessage({ key, gz, u }, u ? [u.buffer] : []);
    return pending;
  }

  // drop the decoded slices outside the window, decode the fetched ones inside it (nearest first)
  function fillWindow() {
    for (const [key, v] of values) {
      if (inWindow(key)) continue;
      values.delete(key);
      if (spare.length < 8) spare.push(v.u);
    }
    const n = series().images.length;
    for (let d = 0; d <= WINDOW; d += 1) {
      for (const i of d ? [state.index + d, state.index - d] : [state.index]) {
        if (i < 0 || i >= n) continue;
        const key = frameKey(i);
        if (packed.has(key) && !values.has(key)) decode(key).then(paintIfCurrent, () => {});
      }
    }
  }

  function paintIfCurrent(v) {
    if (v && values.get(frameKey(state.index)) === v) paint();
  }

  // what the page holds of the series' values (the bench and the tests read it)
  function held() {
    let decodedBytes = 0;
    let packedBytes = 0;
    for (const v of values.values()) decodedBytes += v.u.byteLength;
    for (const a of spare) decodedBytes += a.byteLength;
    for (const b of packed.values()) packedBytes += b.byteLength;
    return { decoded: values.size, decodedBytes, packed: packed.size, packedBytes, bytes: decodedBytes + packedBytes };
  }

  let valueGen = 0;
  let valueQueue = [];
  let valueInFlight = 0;

  function loadValues() {
    // every slice of the series, nearest to the current one first
    valueGen += 1;
    const s = series();
    if (noValues.has(s.uid)) return;
    const n = s.images.length;
    const order = [];
    for (let d = 0; d < n; d += 1) {
      if (state.index + d < n) order.push(state.index + d);
      if (d > 0 && state.index - d >= 0) order.push(state.index - d);
    }
    valueQueue = order.map((i) => [frameKey(i), `${framePath(i)}/values?form=gzip`, s.uid]);
    pumpValues(valueGen);
  }

  function pumpValues(gen) {
    while (valueInFlight < PARALLEL && valueQueue.length && gen === valueGen) {
      const [key, url, suid] = valueQueue.shift();
      if (packed.has(key) || noValues.has(suid)) continue;
      valueInFlight += 1;
      fetch(url, { credentials: "same-origin" })
        .then((r) => {
          if (r.status === 400) noValues.add(suid);
          return r.ok ? r.arrayBuffer() : null;
        })
        .then((buf) => {
          if (!buf || !keyIndex.has(key)) return null;
          packed.set(key, buf);
          return inWindow(key) ? decode(key) : null;
        })
        .then(paintIfCurrent)
        .catch(() => {})
        .finally(() => {
          valueInFlight -= 1;
          progress();
          if (noValues.has(suid) && series().uid === suid) preload(); // the JPEGs then
          pumpValues(valueGen);
        });
    }
  }

  // ---- server-rendered JPEGs: the first paint, and images without values -------------------

  const cache = new Map(); // url -> {img, ready, failed, waiters}
  let generation = 0;
  let queue = [];
  let inFlight = 0;

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
    // JPEG preloading, only for a series without values
    generation += 1;
    if (!noValues.has(series().uid)) return;
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
    while (inFlight < PARALLEL && queue.length && gen === generation) {
      const url = queue.shift();
      const cached = cache.get(url);
      if (cached && (cached.ready || cached.failed)) continue;
      inFlight += 1;
      load(url, () => {
        inFlight -= 1;
        progress();
        pump(generation);
      });
    }
  }

  function loadedCount() {
    const s = series();
    let ready = 0;
    const jpeg = noValues.has(s.uid);
    for (let i = 0; i < s.images.length; i += 1) {
      if (jpeg) {
        const e = cache.get(sliceUrl(i, state.win));
        if (e && e.ready) ready += 1;
      } else if (packed.has(frameKey(i))) ready += 1;
    }
    return ready;
  }

  function progress() {
    const n = series() ? series().images.length : 0;
    const ready = loadedCount();
    viewer.dataset.loaded = String(ready);
    const bar = $("#progress");
    bar.classList.add("known");
    bar.firstElementChild.style.width = `${n ? (100 * ready) / n : 100}%`;
    bar.hidden = ready >= n;
  }

  // ---- windows ------------------------------------------------------------------------------

  const luts = new Map();

  function lutFor(v, win) {
    const key = `${win[0]},${win[1]},${v.slope},${v.intercept},${v.offset},${v.mono1}`;
    let lut = luts.get(key);
    if (lut) return lut;
    if (luts.size >= 8) luts.clear(); // 256 KB each
    lut = new Uint32Array(65536);
    const [c, w] = win;
    const lo = c - 0.5 - (w - 1) / 2;
    const k = 255 / Math.max(w - 1, 1);
    for (let u = 0; u < 65536; u += 1) {
      const mv = (u - v.offset) * v.slope + v.intercept;
      let g = Math.round((mv - lo) * k);
      g = g < 0 ? 0 : g > 255 ? 255 : g;
      if (v.mono1) g = 255 - g;
      lut[u] = 0xff000000 | (g << 16) | (g << 8) | g;
    }
    luts.set(key, lut);
    return lut;
  }

  function autoWindow(v) {
    // the 1st to 99th percentile of the modality values
    const hist = new Uint32Array(65536);
    const step = Math.max(1, Math.floor(v.u.length / 65536));
    let n = 0;
    for (let i = 0; i < v.u.length; i += step, n += 1) hist[v.u[i]] += 1;
    let acc = 0;
    let lo = 0;
    let hi = 65535;
    for (let u = 0; u < 65536; u += 1) {
      acc += hist[u];
      if (acc <= n * 0.01) lo = u;
      if (acc < n * 0.99) hi = u + 1;
    }
    const a = (lo - v.offset) * v.slope + v.intercept;
    const b = (hi - v.offset) * v.slope + v.intercept;
    return [(a + b) / 2, Math.max(1, Math.abs(b - a))];
  }

  function windowFor(v) {
    if (state.win) return state.win;
    const s = series();
    if (state.preset === "auto" || !s.window) return autoWindow(v);
    return s.window;
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

  // where the image sits on the canvas (device px): x0, y0, scale per column, rows' aspect
  function geometry() {
    const s = series();
    const v = values.get(frameKey(state.index));
    const cols = v ? v.cols : s.columns || 512;
    const rows = v ? v.rows : s.rows || 512;
    const aspect = s.spacing ? s.spacing[0] / s.spacing[1] : 1;
    const dpr = window.devicePixelRatio || 1;
    const fit = Math.min(canvas.width / cols, canvas.height / (rows * aspect));
    const k = fit * state.zoom;
    return {
      cols,
      rows,
      aspect,
      k,
      x0: (canvas.width - cols * k) / 2 + state.panX * dpr,
      y0: (canvas.height - rows * aspect * k) / 2 + state.panY * dpr,
    };
  }

  const off = document.createElement("canvas");
  const offCtx = off.getContext("2d");
  let offKey = "";
  let offImg = null; // the RGBA buffer slices are windowed into, reused

  function renderValues(v, win) {
    const key = `${frameKey(state.index)}|${win[0]},${win[1]}`;
    if (key === offKey) return;
    if (off.width !== v.cols || off.height !== v.rows) {
      off.width = v.cols;
      off.height = v.rows;
    }
    if (!offImg || offImg.width !== v.cols || offImg.height !== v.rows) offImg = offCtx.createImageData(v.cols, v.rows);
    const img = offImg;
    const out = new Uint32Array(img.data.buffer);
    const lut = lutFor(v, win);
    const u = v.u;
    for (let i = 0; i < u.length; i += 1) out[i] = lut[u[i]];
    offCtx.putImageData(img, 0, 0);
    offKey = key;
  }

  let lastImg = null; // the JPEG drawn last (kept on screen until the next image is ready)

  function paint() {
    const s = series();
    if (!s) return;
    const g = geometry();
    const v = values.get(frameKey(state.index));
    let source = null;
    let win = null;
    if (v) {
      win = windowFor(v);
      renderValues(v, win);
      source = off;
      state.shownKey = `values:${frameKey(state.index)}`;
    } else {
      const want = cache.get(sliceUrl(state.index, state.win));
      if (want && want.ready) {
        lastImg = want.img;
        win = state.win || s.window;
        state.shownKey = sliceUrl(state.index, state.win);
      }
      source = lastImg;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height); // the viewer's background is black
    if (!source) return;
    // smooth, never blocky: bilinear when magnifying (cheap enough for 60 slices/s), the
    // best filter when a large image (a radiograph) is shrunk to the screen
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = g.k >= 1 ? "low" : "high";
    ctx.drawImage(source, g.x0, g.y0, g.cols * g.k, g.rows * g.aspect * g.k);
    drawMarks(g);
    if (win) $("#wl").textContent = `W ${Math.round(win[1])} L ${Math.round(win[0])}`; // with its image
    state.drawn += 1;
    viewer.dataset.drawn = String(state.drawn);
    if (state.drawn === 1) {
      if (performance.mark) performance.mark("cloudfilm:first-draw");
      // the page's own <img> of the first slice goes once the canvas has been presented
      // (hidden in the same frame, it would never have been painted at all)
      requestAnimationFrame(() => requestAnimationFrame(() => viewer.classList.add("ready")));
    }
  }

  // ---- measurements -------------------------------------------------------------------------

  function unit() {
    const s = series();
    return s.spacing ? "mm" : "px";
  }

  function mmBetween(a, b) {
    const s = series();
    const [rs, cs] = s.spacing || [1, 1];
    return Math.hypot((b[0] - a[0]) * cs, (b[1] - a[1]) * rs);
  }

  function valueAt(col, row) {
    const v = values.get(frameKey(state.index));
    if (!v) return null;
    const c = Math.floor(col);
    const r = Math.floor(row);
    if (c < 0 || r < 0 || c >= v.cols || r >= v.rows) return null;
    return (v.u[r * v.cols + c] - v.offset) * v.slope + v.intercept;
  }

  // mean, SD (modality values: HU for CT) and area of the ellipse (kind "roi") or rectangle
  // (kind "rect") spanned by image points a and b: the pixels whose centres lie inside; the
  // area from the drawn shape, in mm² from the row and column spacings (which may differ)
  function regionStats(kind, a, b) {
    const v = values.get(frameKey(state.index));
    if (!v) return null;
    const cx = (a[0] + b[0]) / 2;
    const cy = (a[1] + b[1]) / 2;
    const rx = Math.abs(b[0] - a[0]) / 2;
    const ry = Math.abs(b[1] - a[1]) / 2;
    if (rx < 0.5 || ry < 0.5) return null;
    const ellipse = kind === "roi";
    let n = 0;
    let sum = 0;
    let sq = 0;
    for (let r = Math.max(0, Math.floor(cy - ry)); r <= Math.min(v.rows - 1, Math.ceil(cy + ry)); r += 1) {
      for (let c = Math.max(0, Math.floor(cx - rx)); c <= Math.min(v.cols - 1, Math.ceil(cx + rx)); c += 1) {
        const dx = (c + 0.5 - cx) / rx;
        const dy = (r + 0.5 - cy) / ry;
        if (ellipse ? dx * dx + dy * dy > 1 : Math.abs(dx) > 1 || Math.abs(dy) > 1) continue;
        const mv = (v.u[r * v.cols + c] - v.offset) * v.slope + v.intercept;
        n += 1;
        sum += mv;
        sq += mv * mv;
      }
    }
    if (!n) return null;
    const mean = sum / n;
    const [rs, cs] = series().spacing || [1, 1];
    const area = (ellipse ? Math.PI : 4) * rx * cs * ry * rs;
    return { n, mean, sd: Math.sqrt(Math.max(0, sq / n - mean * mean)), area };
  }

  function angleAt(a, b, c) {
    const [rs, cs] = series().spacing || [1, 1];
    const u = [(a[0] - b[0]) * cs, (a[1] - b[1]) * rs];
    const w = [(c[0] - b[0]) * cs, (c[1] - b[1]) * rs];
    const cos = (u[0] * w[0] + u[1] * w[1]) / (Math.hypot(...u) * Math.hypot(...w) || 1);
    return (Math.acos(Math.max(-1, Math.min(1, cos))) * 180) / Math.PI;
  }

  function valueUnit() {
    return series().modality === "CT" ? "HU" : "";
  }

  function measure(m) {
    // the numbers of a mark, in the units the image allows
    if (m.kind === "length") return { kind: "length", [unit()]: mmBetween(m.pts[0], m.pts[1]) };
    if (m.kind === "angle") return m.pts.length === 3 ? { kind: "angle", deg: angleAt(...m.pts) } : { kind: "angle" };
    if (m.kind === "probe") return { kind: "probe", value: valueAt(...m.pts[0]) };
    if (m.kind === "roi" || m.kind === "rect") return { kind: m.kind, ...(regionStats(m.kind, m.pts[0], m.pts[1]) || {}) };
    return { kind: m.kind };
  }

  function label(m) {
    const r = measure(m);
    const u = valueUnit();
    if (m.kind === "length") return `${r[unit()].toFixed(1)} ${unit()}`;
    if (m.kind === "angle") return r.deg === undefined ? "" : `${r.deg.toFixed(1)}°`;
    if (m.kind === "probe") return r.value === null ? "-" : `${Math.round(r.value)} ${u}`;
    if (m.kind === "roi" || m.kind === "rect") {
      if (r.mean === undefined) return "";
      const area = unit() === "mm" ? `${(r.area / 100).toFixed(2)} cm²` : `${Math.round(r.area)} px²`;
      return `${r.mean.toFixed(1)}±${r.sd.toFixed(1)} ${u} · ${area}`;
    }
    return "";
  }

  function drawMarks(g) {
    const dpr = window.devicePixelRatio || 1;
    const at = (p) => [g.x0 + p[0] * g.k, g.y0 + p[1] * g.aspect * g.k];
    ctx.lineWidth = 1.5 * dpr;
    ctx.strokeStyle = "#ffd75e";
    ctx.fillStyle = "#ffd75e";
    ctx.font = `${13 * dpr}px system-ui,sans-serif`;
    ctx.shadowColor = "#000";
    ctx.shadowBlur = 3 * dpr;
    for (const m of state.pending ? [...state.marks, state.pending] : state.marks) {
      const pts = m.pts.map(at);
      ctx.beginPath();
      if (m.kind === "roi" && pts.length === 2) {
        const [a, b] = pts;
        ctx.ellipse((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, Math.abs(b[0] - a[0]) / 2, Math.abs(b[1] - a[1]) / 2, 0, 0, 2 * Math.PI);
      } else if (m.kind === "rect" && pts.length === 2) {
        const [a, b] = pts;
        ctx.rect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]));
      } else if (m.kind === "probe") {
        ctx.arc(pts[0][0], pts[0][1], 4 * dpr, 0, 2 * Math.PI);
      } else {
        pts.forEach((p, i) => (i ? ctx.lineTo(...p) : ctx.moveTo(...p)));
      }
      ctx.stroke();
      const text = label(m);
      const last = pts[pts.length - 1];
      if (text) {
        // beside the mark's last point, kept on the canvas
        const w = ctx.measureText(text).width;
        const x = Math.max(4 * dpr, Math.min(last[0] + 8 * dpr, canvas.width - w - 4 * dpr));
        ctx.fillText(text, x, Math.max(16 * dpr, last[1] - 8 * dpr));
      }
    }
    ctx.shadowBlur = 0;
  }

  function clientToImage(x, y) {
    const g = geometry();
    const rect = canvas.getBoundingClientRect();
    const dpr = canvas.width / rect.width;
    return [((x - rect.left) * dpr - g.x0) / g.k, ((y - rect.top) * dpr - g.y0) / (g.k * g.aspect)];
  }

  function imageToClient(col, row) {
    const g = geometry();
    const rect = canvas.getBoundingClientRect();
    const dpr = canvas.width / rect.width;
    return { x: rect.left + (g.x0 + col * g.k) / dpr, y: rect.top + (g.y0 + row * g.aspect * g.k) / dpr };
  }

  function noteText() {
    const s = series();
    if (!s) return "";
    if (!s.spacing) return bi("无像素间距", "no pixel spacing");
    if (s.spacing_kind === "imager") return bi("探测器平面，未校准", "at detector, uncalibrated");
    return "";
  }

  // ---- slices and series ---------------------------------------------------------------------

  function show() {
    const s = series();
    const url = sliceUrl(state.index, state.win);
    $("#slice").textContent = `${s.modality || ""} ${state.index + 1} / ${s.images.length}`;
    $("#note").replaceChildren(noteText());
    viewer.dataset.index = String(state.index);
    viewer.dataset.series = s.uid;
    const dl = $("#dl-image");
    if (M.download) {
      dl.hidden = false;
      dl.href = url + (url.includes("?") ? "&" : "?") + "download=1";
    }
    const key = frameKey(state.index);
    if (values.has(key)) {
      paint();
      return;
    }
    if (packed.has(key)) {
      // fetched, being decoded: the slice before stays on screen for the few ms it takes
      decode(key).then(paintIfCurrent, () => {});
      return;
    }
    load(url, (entry) => {
      if (entry.ready && sliceUrl(state.index, state.win) === url && !values.has(frameKey(state.index))) paint();
    });
  }

  function go(i) {
    const n = series().images.length;
    const next = Math.max(0, Math.min(n - 1, i));
    if (next === state.index) return;
    state.index = next;
    state.marks = []; // measurements belong to their slice
    state.pending = null;
    fillWindow();
    show();
  }

  function setWindow(win, preset) {
    state.win = win;
    state.preset = preset || "";
    for (const b of document.querySelectorAll("#presets button")) {
      b.setAttribute("aria-pressed", String(b.dataset.preset === state.preset));
    }
    show();
    if (noValues.has(series().uid)) preload();
  }

  function resetView() {
    state.zoom = 1;
    state.panX = 0;
    state.panY = 0;
    paint();
  }

  function buildPresets() {
    const box = $("#presets");
    box.replaceChildren();
    const s = series();
    const all = [{ id: "", label: "默认 Default", window: null }, ...(s.presets || [])];
    for (const p of all) {
      const [zh, ...en] = p.label.split(" ");
      const b = el("button", { type: "button", "data-preset": p.id, "aria-pressed": String(p.id === state.preset) }, en.length ? bi(zh, en.join(" ")) : p.label);
      if (p.window) b.dataset.window = p.window.join(",");
      b.addEventListener("click", () => setWindow(p.window ? p.window.slice() : null, p.id));
      box.append(b);
    }
  }

  function selectSeries(i, start) {
    state.seriesIndex = i;
    state.index = Math.max(0, Math.min(series().images.length - 1, start || 0));
    state.win = null;
    state.preset = "";
    state.marks = [];
    state.pending = null;
    lastImg = null;
    offKey = "";
    // a phone holds one series' values at a time
    keyIndex = new Map(series().images.map((_, j) => [frameKey(j), j]));
    for (const k of packed.keys()) if (!keyIndex.has(k)) packed.delete(k);
    fillWindow();
    for (const b of document.querySelectorAll("#strip button")) {
      b.setAttribute("aria-current", String(Number(b.dataset.i) === i));
    }
    buildPresets();
    resetView();
    show();
    progress();
    loadValues();
    preload();
  }

  function buildStrip() {
    const strip = $("#strip");
    strip.replaceChildren();
    state.study.series.forEach((s, i) => {
      const name = [s.number !== null && s.number !== undefined ? `S${s.number}` : "", s.modality, s.description || ""].filter(Boolean).join(" ");
      const b = el(
        "button",
        { type: "button", "data-i": String(i), "aria-current": String(i === state.seriesIndex), title: name },
        el("img", { src: `${base}/series/${s.uid}/thumbnail`, alt: "", loading: "lazy" }),
        el("span", { class: "name", text: name }),
        el("span", { class: "count" }, bi(`${s.images.length} 张`, s.images.length === 1 ? "1 image" : `${s.images.length} images`)),
      );
      b.addEventListener("click", () => selectSeries(i, Math.floor(s.images.length / 2)));
      strip.append(b);
    });
  }

  function fmtDate(ts) {
    const d = new Date(ts * 1000);
    const p = (x) => String(x).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
  }

  function buildReport() {
    const box = $("#report");
    box.replaceChildren();
    if (!state.study.reports.length) return;
    box.append(el("h2", {}, bi("报告", "Report")));
    for (const r of state.study.reports) {
      const card = el("article", { class: `rep ${r.status}` });
      const title = el("h3", {}, r.title || bi("报告", "Report"));
      title.append(el("span", { class: `status ${r.status}` }, pair(r.status_label || r.status)));
      if (r.mutual_recognition) title.append(el("span", { class: "tag" }, bi("互认", "Mutual recognition")));
      card.append(title);
      card.append(
        el(
          "p",
          { class: "meta" },
          bi("报告医生 ", "Reader "), el("b", { class: "reader", text: r.reader.name || "-" }),
          " ", pair(r.reader.role), ` ${r.reader.hospital} `,
          " · ", el("time", { text: r.created_at ? fmtDate(r.created_at) : "-" }),
          " · ",
          r.verified ? el("span", { class: "ok" }, bi("✓ 完整性校验通过", "✓ integrity checked")) : el("span", { class: "flag" }, bi("✗ 校验失败", "✗ damaged")),
        ),
      );
      if (r.text !== null && r.text !== undefined) card.append(el("pre", { text: r.text }));
      else if (r.media_type === "application/pdf") {
        card.append(
          el("iframe", { class: "pdf", src: r.url, title: r.title || "PDF" }),
          el("a", { href: r.url, target: "_blank", rel: "noopener", class: "open" }, bi("打开 PDF 报告", "Open the PDF report")),
        );
      } else card.append(el("a", { href: r.url, target: "_blank", rel: "noopener", class: "open" }, bi("打开报告", "Open the report")));
      box.append(card);
    }
  }

  function showStudyHeader(h) {
    $("#pname").textContent = h.patient;
    $("#pinfo").replaceChildren(pair(h.age), " ", pair(h.sex));
    $("#sinfo").textContent = `${h.hospital} · ${h.date} · ${h.description || "-"}`;
    const zip = $("#dl-zip");
    zip.hidden = !M.download;
    zip.href = `${base}/studies/${h.uid}/download.zip`;
    for (const c of document.querySelectorAll("#studies button")) {
      c.setAttribute("aria-current", String(c.dataset.uid === h.uid));
    }
  }

  function openStudy(manifest, startSeries, startIndex) {
    state.study = manifest;
    state.seriesIndex = manifest.main || 0;
    showStudyHeader(manifest);
    buildStrip();
    buildReport();
    if (manifest.series.length) selectSeries(startSeries ?? manifest.main ?? 0, startIndex ?? manifest.start ?? 0);
  }

  // "CT CHEST", not "CT CT CHEST": the modalities unless the description names them
  function studyKind(s) {
    const mods = s.modalities.join("/");
    const d = s.description || "";
    return s.modalities.length && d.startsWith(s.modalities[0]) ? d : `${mods} ${d}`.trim();
  }

  function buildStudyCards() {
    const box = $("#studies");
    if (M.studies.length < 2) return;
    box.hidden = false;
    for (const s of M.studies) {
      const thumb = M.thumbs && M.thumbs[s.uid];
      const card = el(
        "button",
        { type: "button", class: "card", "data-uid": s.uid, "aria-current": String(s.uid === state.study.uid) },
        thumb ? el("img", { src: `${base}/series/${thumb}/thumbnail`, alt: "", loading: "lazy" }) : el("span", { class: "noimg" }),
        el("span", { class: "date", text: s.date }),
        el("span", { class: "hosp", text: s.hospital }),
        el("span", { class: "mod", text: studyKind(s) }),
      );
      card.addEventListener("click", async () => {
        const r = await fetch(`${base}/studies/${s.uid}/manifest.json`, { credentials: "same-origin" });
        if (r.ok) openStudy(await r.json());
      });
      box.append(card);
    }
  }

  // ---- input: pointer (touch, mouse, pen), wheel, keys -------------------------------------

  const pointers = new Map();
  let gesture = null;

  function midDist() {
    const [a, b] = [...pointers.values()];
    return { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2, d: Math.hypot(a.x - b.x, a.y - b.y) || 1 };
  }

  function currentWindow() {
    const v = values.get(frameKey(state.index));
    return state.win || (v ? windowFor(v) : series().window) || [40, 400];
  }

  function startGesture() {
    if (pointers.size >= 2) {
      state.pending = null;
      const m = midDist();
      gesture = { kind: "pinch", x: m.x, y: m.y, d: m.d, zoom: state.zoom, panX: state.panX, panY: state.panY };
    } else if (pointers.size === 1) {
      const p = [...pointers.values()][0];
      gesture = { kind: state.mode, x: p.x, y: p.y, index: state.index, panX: state.panX, panY: state.panY, win: currentWindow().slice() };
      const at = clientToImage(p.x, p.y);
      if (state.mode === "length" || state.mode === "roi" || state.mode === "rect") state.pending = { kind: state.mode, pts: [at, at] };
      else if (state.mode === "probe") {
        state.marks = state.marks.filter((m) => m.kind !== "probe");
        state.marks.push({ kind: "probe", pts: [at] });
        paint();
      } else if (state.mode === "angle") {
        const open = state.marks.find((m) => m.kind === "angle" && m.pts.length < 3);
        if (open) open.pts.push(at);
        else state.marks.push({ kind: "angle", pts: [at] });
        paint();
      }
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
      state.zoom = Math.max(0.5, Math.min(20, gesture.zoom * (m.d / gesture.d)));
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
    } else if (state.pending) {
      state.pending.pts[1] = clientToImage(p.x, p.y);
      paint();
    }
  });

  function endPointer(ev) {
    if (!pointers.delete(ev.pointerId)) return;
    if (gesture && gesture.kind === "wl" && pointers.size === 0 && state.win && noValues.has(series().uid)) {
      preload(); // the whole series again, with the window just chosen
    }
    if (state.pending && pointers.size === 0) {
      const [a, b] = state.pending.pts;
      if (Math.hypot(b[0] - a[0], b[1] - a[1]) > 1) state.marks.push(state.pending);
      state.pending = null;
      paint();
    }
    startGesture();
  }
  viewer.addEventListener("pointerup", endPointer);
  viewer.addEventListener("pointercancel", endPointer);

  // free window/level while dragging: painted here from the values; for an image without
  // values one server request at a time, the latest window wins
  let wlBusy = false;
  let wlNext = null;
  function liveWindow(win) {
    state.win = win;
    state.preset = "";
    if (values.has(frameKey(state.index))) {
      paint();
      return;
    }
    if (wlBusy) {
      wlNext = win;
      return;
    }
    wlBusy = true;
    const url = sliceUrl(state.index, win);
    load(url, () => {
      wlBusy = false;
      paint();
      if (wlNext) {
        const w = wlNext;
        wlNext = null;
        liveWindow(w);
      }
    });
  }

  function zoomBy(f) {
    state.zoom = Math.max(0.5, Math.min(20, state.zoom * f));
    paint();
  }

  viewer.addEventListener(
    "wheel",
    (ev) => {
      ev.preventDefault();
      if (ev.ctrlKey || ev.metaKey) zoomBy(Math.exp(-ev.deltaY / 300));
      else go(state.index + (ev.deltaY > 0 ? 1 : -1));
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
      "+": () => zoomBy(1.25),
      "-": () => zoomBy(1 / 1.25),
      "0": resetView,
      Escape: () => { state.marks = []; paint(); },
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
  $("#reset").addEventListener("click", () => {
    state.marks = [];
    resetView();
    setWindow(null, "");
  });

  // ---- language, copy and share ------------------------------------------------------------

  function setLang(lang) {
    document.documentElement.classList.toggle("en", lang === "en");
    document.documentElement.lang = lang === "en" ? "en" : "zh-CN";
    $("#lang").textContent = lang === "en" ? "中文" : "EN";
    for (const node of document.querySelectorAll("[data-zh]")) {
      const text = lang === "en" ? node.dataset.en : node.dataset.zh;
      if (node instanceof HTMLInputElement) node.placeholder = text;
      else node.textContent = text;
    }
    try {
      localStorage.setItem("cloudfilm-lang", lang);
    } catch (e) {
      // private mode: the choice lasts for this page only
    }
  }
  $("#lang").addEventListener("click", () => setLang(isEn() ? "zh" : "en"));

  async function copyLink() {
    const b = $("#copy");
    try {
      await navigator.clipboard.writeText(location.href);
      b.dataset.done = "1";
      b.replaceChildren(bi("已复制", "Copied"));
    } catch (e) {
      window.prompt(isEn() ? "Copy the link" : "复制链接", location.href);
    }
  }
  $("#copy").addEventListener("click", copyLink);
  // the system's share sheet where the browser has one (the page's title only: no patient
  // data travels with the link), else the link is copied
  $("#share").addEventListener("click", () => {
    if (navigator.share) navigator.share({ title: document.title, url: location.href }).catch(() => {});
    else copyLink();
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

  function failed(e) {
    return el("p", { class: "flag", text: String(e.message || e) });
  }

  function section(title, id, fill) {
    const det = el("details", { id }, el("summary", {}, title));
    const box = el("div");
    det.append(box);
    det.addEventListener("toggle", () => {
      if (det.open) fill(box).catch((e) => box.replaceChildren(failed(e)));
    });
    return det;
  }

  // head: nodes (bi labels) or ""; rows: nodes or plain values (data)
  function table(head, rows) {
    const t = el("table", {}, el("tr", {}, ...head.map((h) => el("th", {}, h))));
    for (const r of rows) t.append(el("tr", {}, ...r.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: String(c) })))));
    return t;
  }

  const none = () => el("p", {}, bi("无", "None"));
  const button = (zh, en, attrs) => el("button", { type: "button", ...(attrs || {}) }, bi(zh, en));

  const LINK_STATES = {
    active: ["有效", "active"],
    revoked: ["已撤销", "revoked"],
    expired: ["已过期", "expired"],
    locked: ["已锁定", "locked"],
    blocked: ["已封锁", "blocked"],
  };
  const stateText = (table, key) => (table[key] ? bi(...table[key]) : String(key));

  async function fillLinks(box) {
    // the patient's links (each revocable), then the form that makes a new one
    const list = el("div");
    const refresh = async () => {
      const rows = (await api("links")).map((l) => {
        const revoke = button("撤销", "Revoke");
        revoke.disabled = l.state !== "active";
        revoke.addEventListener("click", async () => {
          await api(`links/${l.id}`, { method: "DELETE" });
          await refresh();
        });
        return [fmtTime(Date.parse(l.created_at) / 1000), stateText(LINK_STATES, l.state), l.views, revoke];
      });
      list.replaceChildren(table([bi("创建", "Created"), bi("状态", "State"), bi("查看", "Views"), ""], rows));
    };
    const form = el("form", { id: "new-link" });
    const days = el("select", { name: "days" });
    for (const d of [1, 3, 7, 30]) days.append(opt(String(d), `${d} 天`, d === 1 ? "1 day" : `${d} days`));
    const code = el("input", { type: "checkbox", name: "code", checked: true });
    const dl = el("input", { type: "checkbox", name: "download" });
    form.append(
      el("label", {}, bi("有效期 ", "Valid for "), days),
      el("label", {}, code, " ", bi("提取码", "Extraction code")),
    );
    if (M.download) form.append(el("label", {}, dl, " ", bi("允许下载", "Allow download")));
    form.append(el("button", { type: "submit" }, bi("生成医生链接", "Create a link for a doctor")));
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
          l.code ? el("p", {}, bi("提取码：", "Code: "), el("b", { class: "code-value", text: l.code })) : "",
        );
        await refresh();
      } catch (e) {
        out.replaceChildren(failed(e));
      }
    });
    box.replaceChildren(list, form, out);
    await refresh();
  }

  const ROLES = {
    radiologist: ["放射科医生", "radiologist"],
    clinician: ["临床医生", "clinician"],
    admin: ["管理员", "administrator"],
    auditor: ["审计员", "auditor"],
  };
  const WHO = {
    you: ["本人", "you"],
    "doctor link": ["医生链接", "doctor link"],
    link: ["其他链接", "other link"],
  };

  async function fillHistory(box) {
    const rows = (await api("history")).map((h) => {
      let who;
      if (h.who === "staff") who = el("span", {}, `${h.hospital_name || h.hospital} `, stateText(ROLES, h.role));
      else who = stateText(WHO, h.who);
      return [
        `${h.day} ${fmtTime(h.last).slice(11)}`,
        who,
        h.requests,
        h.break_glass ? el("span", { class: "flag glass" }, bi("紧急调阅：", "break-glass: "), h.reason) : "",
      ];
    });
    box.replaceChildren(rows.length ? table([bi("时间", "When"), bi("谁", "Who"), bi("次数", "Requests"), ""], rows) : none());
  }

  // what a grant or a request covers: [zh, en] (a study's date, modalities and description
  // are data, the same in both)
  function scopeText(studyUid) {
    if (!studyUid) return ["全部检查", "all studies"];
    const s = M.studies.find((x) => x.uid === studyUid);
    if (!s) return ["一次检查", "one study"];
    const text = `${s.date} ${s.modalities.join("/")} ${s.description || ""}`.trim();
    return [text, text];
  }

  async function fillConsents(box) {
    const grants = await api("consents");
    const rows = grants.map((g) => {
      const revoke = button("撤销", "Revoke");
      revoke.disabled = !g.active;
      revoke.addEventListener("click", async () => {
        await api(`consents/${g.id}/revoke`, { method: "POST" });
        fillConsents(box);
      });
      const who = (g.hospital_name || g.grantee_hospital) + (g.grantee_subject ? ` ${g.grantee_subject}` : "");
      return [who, bi(...scopeText(g.study_uid)), fmtTime(g.expires_at), g.active ? bi("有效", "active") : bi("无效", "inactive"), revoke];
    });
    box.replaceChildren(rows.length ? table([bi("授权给", "Granted to"), bi("范围", "Scope"), bi("到期", "Expires"), "", ""], rows) : none());
  }

  const REQUEST_STATES = { approved: ["已同意", "approved"], declined: ["已拒绝", "declined"], expired: ["已过期", "expired"] };

  async function fillRequests(box) {
    const rows = (await api("consent-requests")).map((q) => {
      const cell = el("span");
      if (q.state === "pending") {
        for (const [action, zh, en] of [["approve", "同意", "Approve"], ["decline", "拒绝", "Decline"]]) {
          const b = button(zh, en, { class: action });
          b.addEventListener("click", async () => {
            await api(`consent-requests/${q.id}/${action}`, { method: "POST" });
            await fillRequests(box);
          });
          cell.append(b, " ");
        }
      } else cell.append(stateText(REQUEST_STATES, q.state));
      return [fmtTime(q.created_at), q.hospital_name + (q.subject ? ` ${q.subject}` : ""), bi(...scopeText(q.study_uid)), cell];
    });
    box.replaceChildren(rows.length ? table([bi("时间", "When"), bi("申请方", "Asked by"), bi("范围", "Scope"), ""], rows) : none());
  }

  function studyChoice() {
    const sel = el("select", { name: "study" });
    sel.append(opt("", "全部检查", "All my studies"));
    for (const s of M.studies) sel.append(opt(s.uid, ...scopeText(s.uid)));
    return sel;
  }

  function daysChoice() {
    const sel = el("select", { name: "days" });
    for (const d of [1, 7, 30, 90]) sel.append(opt(String(d * 24), `${d} 天`, d === 1 ? "1 day" : `${d} days`));
    return sel;
  }

  const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

  async function fillGrant(box) {
    const hospitals = await api("hospitals");
    const form = el("form", { id: "grant" });
    const hospital = el("select", { name: "hospital" });
    for (const h of hospitals) hospital.append(el("option", { value: h.id, text: h.name }));
    const subject = el("input", { type: "text", name: "subject", "data-zh": "医生账号（可选）", "data-en": "doctor's user (optional)" });
    subject.placeholder = isEn() ? subject.dataset.en : subject.dataset.zh;
    const study = studyChoice();
    const days = daysChoice();
    form.append(
      el("label", {}, bi("医院 ", "Hospital "), hospital),
      el("label", {}, bi("医生 ", "Doctor "), subject),
      el("label", {}, bi("检查 ", "Studies "), study),
      el("label", {}, bi("有效期 ", "Valid for "), days),
      el("button", { type: "submit" }, bi("授权", "Give consent")),
    );
    const out = el("div", { id: "grant-out" });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = { hospital: hospital.value, ttl_hours: Number(days.value) };
      if (subject.value.trim()) body.subject = subject.value.trim();
      if (study.value) body.study_uid = study.value;
      try {
        const g = await post("consents", body);
        out.replaceChildren(el("p", {}, bi("已授权：", "Consent given: "), el("b", { text: g.hospital_name })));
      } catch (e) {
        out.replaceChildren(failed(e));
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
      el("p", {}, bi("医生输入授权码后，其医院可调阅您的检查。", "A doctor who enters the code lets their hospital read your studies.")),
      el("label", {}, only, " ", bi("仅限输入的医生本人", "Only that doctor")),
      el("label", {}, bi("检查 ", "Studies "), study),
      el("label", {}, bi("有效期 ", "Valid for "), days),
      el("button", { type: "submit" }, bi("显示授权码", "Show a consent code")),
    );
    const out = el("div", { id: "code-out" });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = { only_that_clinician: only.checked, ttl_hours: Number(days.value) };
      if (study.value) body.study_uid = study.value;
      try {
        const c = await post("consent-code", body);
        const mins = Math.round(c.valid_s / 60);
        out.replaceChildren(
          el("p", { class: "code", text: c.code.replace(/(\d{4})(\d{4})/, "$1 $2") }),
          el("p", {}, bi(`${mins} 分钟内有效，仅可使用一次`, `Valid ${mins} minutes, once`)),
        );
      } catch (e) {
        out.replaceChildren(failed(e));
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
      el("h2", {}, bi("我的", "Mine")),
      section(bi("分享给医生", "Share with a doctor"), "links", fillLinks),
      section(bi("访问记录", "Who opened my studies"), "history", fillHistory),
      section(bi("授权管理", "My consents"), "consents", fillConsents),
    );
    // giving consent: only the patient's own link to all their studies may (the API says so)
    const me = await api("me");
    if (!me.may_give_consent) return;
    const pending = me.pending_requests;
    const n = pending ? ` (${pending})` : "";
    const asked = section(bi(`授权申请${n}`, `Consent requests${n}`), "requests", fillRequests);
    if (pending) asked.classList.add("pending");
    mine.append(
      asked,
      section(bi("授权医院", "Give consent"), "grant", fillGrant),
      section(bi("授权码", "Consent code"), "code", fillCode),
    );
  }

  // ---- start --------------------------------------------------------------------------------

  function start() {
    let lang = "zh";
    try {
      lang = localStorage.getItem("cloudfilm-lang") || "zh";
    } catch (e) {
      // no storage: Chinese
    }
    setLang(lang);
    buildStudyCards();
    buildMine().catch((e) => $("#mine").append(el("p", { class: "flag", text: String(e.message || e) })));
    showStudyHeader(state.study);
    state.seriesIndex = state.study.main || 0;
    buildStrip();
    buildReport();
    if (!state.study.series.length) return;
    state.index = state.study.start || 0;
    // the first slice is already in the page (<img id="first">): reuse it rather than fetch again
    if (firstImg) load(sliceUrl(state.index, null), null, firstImg);
    new ResizeObserver(resize).observe(viewer);
    resize();
    selectSeries(state.seriesIndex, state.index);
  }

  // for tests and the bench: read-only state, image <-> page coordinates, and a few actions
  window.cloudfilm = {
    state: () => ({
      study: state.study.uid,
      series: series() && series().uid,
      seriesIndex: state.seriesIndex,
      index: state.index,
      count: series() ? series().images.length : 0,
      window: state.win,
      preset: state.preset,
      presets: series() ? (series().presets || []).map((p) => p.id) : [],
      zoom: state.zoom,
      mode: state.mode,
      drawn: state.drawn,
      loaded: Number(viewer.dataset.loaded || 0),
      values: series() ? values.has(frameKey(state.index)) : false,
      held: held(),
      marks: state.marks.map(measure),
      decoded: { ...decoding },
    }),
    go,
    toClient: imageToClient,
    setWindow: (win) => {
      liveWindow(win);
      return state.drawn;
    },
  };

  start();
})();
