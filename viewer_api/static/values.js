// The cloud-film page's decoder, a worker: a slice's values as the page keeps them (the gzip
// bytes received) are inflated, then the packing is undone (median edge predictor, zigzag byte
// planes; viewer_api/film_pixels.py packs them) into a Uint16Array that goes back to the page
// without a copy. The page may hand over a spare buffer of the right size to decode into.
"use strict";

function unpack(buf, spare) {
  const dv = new DataView(buf);
  if (dv.getUint32(0, false) !== 0x43465031) throw new Error("not packed values"); // "CFP1"
  const rows = dv.getUint16(4, true);
  const cols = dv.getUint16(6, true);
  const flags = dv.getUint8(8);
  const slope = dv.getFloat32(12, true);
  const intercept = dv.getFloat32(16, true);
  const n = rows * cols;
  const lo = new Uint8Array(buf, 20, n);
  const hi = new Uint8Array(buf, 20 + n, n);
  const u = spare && spare.length === n ? spare : new Uint16Array(n);
  // the predictor is the left value on the first row, the one above in the first column,
  // the median edge predictor elsewhere (the same as the full rule with zeros outside)
  let z = 0;
  for (let x = 0, a = 0; x < cols; x += 1) {
    z = lo[x] | (hi[x] << 8);
    a = (a + ((z >>> 1) ^ -(z & 1))) & 0xffff;
    u[x] = a;
  }
  for (let y = 1, i = cols; y < rows; y += 1) {
    z = lo[i] | (hi[i] << 8);
    u[i] = (u[i - cols] + ((z >>> 1) ^ -(z & 1))) & 0xffff;
    i += 1;
    for (let x = 1; x < cols; x += 1, i += 1) {
      z = lo[i] | (hi[i] << 8);
      const a = u[i - 1];
      const b = u[i - cols];
      const c = u[i - cols - 1];
      const mx = a > b ? a : b;
      const mn = a > b ? b : a;
      const p = c >= mx ? mn : c <= mn ? mx : a + b - c;
      u[i] = (p + ((z >>> 1) ^ -(z & 1))) & 0xffff;
    }
  }
  return { rows, cols, u, slope, intercept, offset: flags & 1 ? 32768 : 0, mono1: (flags & 2) !== 0 };
}

// one slice at a time, in the order asked (the page asks for the nearest first)
const queue = [];
let busy = false;

async function run() {
  busy = true;
  while (queue.length) {
    const { key, gz, u } = queue.shift();
    try {
      const t0 = performance.now();
      const stream = new Blob([gz]).stream().pipeThrough(new DecompressionStream("gzip"));
      const v = unpack(await new Response(stream).arrayBuffer(), u);
      self.postMessage({ key, v, ms: performance.now() - t0 }, [v.u.buffer]);
    } catch (e) {
      self.postMessage({ key, v: null, ms: 0, error: String(e) });
    }
  }
  busy = false;
}

self.onmessage = (ev) => {
  queue.push(ev.data);
  if (!busy) run();
};
