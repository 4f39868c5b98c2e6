// genreal serve: what both pages share. The GRF1 frame layout, the access token, rolling stats.
// Plain JS, no dependencies; everything the pages load comes from this server.
"use strict";
const GR = (() => {
  const token = new URLSearchParams(location.search).get("token");
  const withToken = (path) => token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;
  const wsUrl = (query = "") => {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return withToken(`${scheme}//${location.host}/ws${query}`);
  };
  const api = async (path, options) => {
    const r = await fetch(withToken(path), options);
    if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
    return r.json();
  };
  const enc = new TextEncoder(), dec = new TextDecoder();
  // b"GRF1" | uint32 BE header length | JSON header | payload
  function pack(header, payload) {
    const head = enc.encode(JSON.stringify(header));
    const out = new Uint8Array(8 + head.length + payload.byteLength);
    out.set([0x47, 0x52, 0x46, 0x31]);
    new DataView(out.buffer).setUint32(4, head.length);
    out.set(head, 8);
    out.set(new Uint8Array(payload), 8 + head.length);
    return out.buffer;
  }
  function unpack(buffer) {
    const view = new DataView(buffer);
    const n = view.getUint32(4);
    const header = JSON.parse(dec.decode(new Uint8Array(buffer, 8, n)));
    return { header, payload: new Uint8Array(buffer, 8 + n) };
  }
  // Rolling window of samples with percentiles.
  class Rolling {
    constructor(size = 300) { this.size = size; this.values = []; }
    add(v) { this.values.push(v); if (this.values.length > this.size) this.values.shift(); }
    pct(p) {
      if (!this.values.length) return NaN;
      const s = [...this.values].sort((a, b) => a - b);
      return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))];
    }
  }
  class Rate {  // events per second over the last second
    constructor() { this.times = []; }
    tick(t = performance.now()) { this.times.push(t); while (this.times.length && t - this.times[0] > 1000) this.times.shift(); }
    get fps() { return this.times.length; }
  }
  const fmt = (v, unit = " ms") => Number.isFinite(v) ? `${v.toFixed(1)}${unit}` : "–";
  async function decodeImage(header, payload) {  // → ImageBitmap or ImageData
    if (header.fmt === "rgba") return new ImageData(new Uint8ClampedArray(payload.buffer, payload.byteOffset, payload.byteLength), header.w, header.h);
    return createImageBitmap(new Blob([payload], { type: "image/jpeg" }));
  }
  return { token, withToken, wsUrl, api, pack, unpack, Rolling, Rate, fmt, decodeImage };
})();
