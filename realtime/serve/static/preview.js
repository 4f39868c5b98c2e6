// genreal serve · preview page: the browser's camera → server → restyled frames, beside the input.
// Transports: WebSocket (GRF1 frames: JPEG or raw RGBA, one frame in flight: latest wins) or
// WebRTC (the camera track up, the restyled track back, a "control" data channel).
// window.genreal exposes the state and two hooks (onSend, onOutput) for tests and benchmarks.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    transport: $("transport"), size: $("size"), start: $("start"), stop: $("stop"), style: $("style"),
    blend: $("blend"), strength: $("strength"), steps: $("steps"), temporal: $("temporal"), budget: $("budget"),
    status: $("status"), error: $("error"), local: $("local"), out: $("out"), remote: $("remote"),
  };
  const state = {
    running: false, transport: null, ws: null, pc: null, dc: null, stream: null, nextId: 0, inFlight: 0,
    rtt: new GR.Rolling(), server: new GR.Rolling(), rate: new GR.Rate(), drops: 0, lastOutput: null,
    rttBatch: [], backend: "–", styles: [], chosenStyle: null,  // a style or blend the user picked, kept across starts
  };
  const hooks = {};
  window.genreal = { state, hooks, ui };
  const capture = document.createElement("canvas");
  const cctx = capture.getContext("2d", { willReadFrequently: true });
  const octx = ui.out.getContext("2d");

  function setStatus(text) { ui.status.textContent = text; }
  function showError(text) { ui.error.textContent = text || ""; }

  function fillStyles(styles, active) {
    state.styles = styles;
    ui.style.replaceChildren(...styles.map((s) => new Option(s, s, false, s === active)));
  }

  function settings() {
    const steps = ui.steps.value ? Number(ui.steps.value) : null;
    const msg = { type: "config", strength: Number(ui.strength.value), steps, temporal: ui.temporal.checked,
                  budget: ui.budget.value };
    if (state.chosenStyle) msg.style = state.chosenStyle;  // picked before the session started: keep it
    return msg;
  }
  // the picker shows the user's choice when it is one of the server's styles, else the session's own
  const shownStyle = (styles, active) => (state.chosenStyle && styles.includes(state.chosenStyle) ? state.chosenStyle : active);
  function sendControl(msg) {
    const text = JSON.stringify(msg);
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(text);
    else if (state.dc && state.dc.readyState === "open") state.dc.send(text);
  }
  function onControl(msg) {
    if (msg.type === "hello") {
      state.backend = `${msg.backend} (${msg.device})`;
      fillStyles(msg.styles, shownStyle(msg.styles, msg.style));
      sendControl(settings());
    } else if (msg.type === "config") {
      if (state.styles.includes(msg.style)) ui.style.value = msg.style;
      showError("");
    } else if (msg.type === "error") {
      showError(msg.message);
    } else if (msg.type === "stats") {
      state.drops = msg.dropped; $("drops").textContent = msg.dropped;
    } else if (msg.type === "frame") {  // WebRTC: the server's receive → send time of one frame
      state.server.add(msg.server_ms);
    }
  }

  // -- WebSocket transport -----------------------------------------------------------
  function startWs(fmt) {
    const ws = new WebSocket(GR.wsUrl());
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    ws.onopen = () => { setStatus(`WebSocket · ${fmt}`); pump(fmt); };
    ws.onclose = (e) => { setStatus(`closed${e.reason ? ": " + e.reason : ""}`); if (e.reason) showError(e.reason); };
    ws.onmessage = async (e) => {
      if (typeof e.data === "string") { onControl(JSON.parse(e.data)); return; }
      const { header, payload } = GR.unpack(e.data);
      state.inFlight = Math.max(0, state.inFlight - 1);
      const image = await GR.decodeImage(header, payload);
      if (ui.out.width !== header.w || ui.out.height !== header.h) { ui.out.width = header.w; ui.out.height = header.h; }
      if (image instanceof ImageData) octx.putImageData(image, 0, 0); else { octx.drawImage(image, 0, 0); image.close(); }
      const rtt = performance.now() - header.t;
      state.rtt.add(rtt); state.server.add(header.server_ms); state.rate.tick(); state.rttBatch.push(+rtt.toFixed(2));
      state.lastOutput = header;
      if (header.notice) showError(header.notice);  // --cluster: "restarted on another worker"
      if (hooks.onOutput) hooks.onOutput(header, ui.out);
      pump(fmt);
    };
  }

  async function sendFrame(fmt) {
    const v = ui.local, w = v.videoWidth, h = v.videoHeight;
    if (!w || !h || state.ws.readyState !== WebSocket.OPEN) return false;
    if (capture.width !== w || capture.height !== h) { capture.width = w; capture.height = h; }
    const t = performance.now();
    cctx.drawImage(v, 0, 0, w, h);
    const id = state.nextId++;
    if (hooks.onSend) hooks.onSend(id, capture);
    let payload;
    if (fmt === "rgba") payload = cctx.getImageData(0, 0, w, h).data.buffer;
    else payload = await (await new Promise((r) => capture.toBlob(r, "image/jpeg", 0.85))).arrayBuffer();
    if (state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(GR.pack({ id, t, fmt, w, h }, payload));
    return true;
  }

  // One frame in flight: the next is captured when the answer arrives or a new camera frame shows.
  let waiting = false;
  function pump(fmt) {
    if (!state.running || state.inFlight > 0 || waiting) return;
    waiting = true;
    const go = async () => {
      waiting = false;
      if (!state.running || state.inFlight > 0) return;
      state.inFlight++;
      if (!(await sendFrame(fmt))) { state.inFlight--; setTimeout(() => pump(fmt), 30); }
    };
    if (ui.local.requestVideoFrameCallback) ui.local.requestVideoFrameCallback(go); else requestAnimationFrame(go);
  }

  // -- WebRTC transport --------------------------------------------------------------
  function preferCodecs(transceiver, first) {
    if (!window.RTCRtpReceiver || !RTCRtpReceiver.getCapabilities || !transceiver.setCodecPreferences) return;
    const codecs = RTCRtpReceiver.getCapabilities("video").codecs;
    const order = first === "VP8" ? ["video/VP8", "video/H264"] : ["video/H264", "video/VP8"];
    const sorted = [...codecs].sort((a, b) => {
      const ia = order.indexOf(a.mimeType), ib = order.indexOf(b.mimeType);
      return (ia < 0 ? 9 : ia) - (ib < 0 ? 9 : ib);
    });
    transceiver.setCodecPreferences(sorted);
  }

  async function startWebrtc(codec) {
    const info = await GR.api("/api/info");
    if (!info.webrtc) throw new Error(info.webrtc_help);
    const pc = new RTCPeerConnection();
    state.pc = pc;
    const dc = pc.createDataChannel("control");
    state.dc = dc;
    dc.onopen = () => sendControl(settings());
    dc.onmessage = (e) => onControl(JSON.parse(e.data));
    const track = state.stream.getVideoTracks()[0];
    const transceiver = pc.addTransceiver(track, { direction: "sendrecv", streams: [state.stream] });
    preferCodecs(transceiver, codec);
    try {  // a restyled picture is worth more than a high frame rate: keep the size, drop frames instead
      const params = transceiver.sender.getParameters();
      params.degradationPreference = "maintain-resolution";
      await transceiver.sender.setParameters(params);
    } catch (err) { /* not every browser takes it before negotiation */ }
    pc.ontrack = (e) => {
      // a live preview: show each frame as soon as it is decoded rather than smoothing playout
      if ("jitterBufferTarget" in e.receiver) e.receiver.jitterBufferTarget = 0;
      if ("playoutDelayHint" in e.receiver) e.receiver.playoutDelayHint = 0;
      ui.remote.srcObject = new MediaStream([e.track]);
      const tick = (now, meta) => {
        state.rate.tick();
        if (hooks.onOutput) hooks.onOutput({ rtpTimestamp: meta.rtpTimestamp, now }, ui.remote);
        ui.remote.requestVideoFrameCallback(tick);
      };
      if (ui.remote.requestVideoFrameCallback) ui.remote.requestVideoFrameCallback(tick);
    };
    pc.onconnectionstatechange = () => setStatus(`WebRTC · ${pc.connectionState}`);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {  // aiortc takes the candidates inside the SDP
      if (pc.iceGatheringState === "complete") return resolve();
      pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
      setTimeout(resolve, 3000);
    });
    const answer = await GR.api("/api/offer", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp }) });
    state.backend = answer.backend;
    fillStyles(answer.styles, shownStyle(answer.styles, answer.style));
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    ui.out.hidden = true; ui.remote.hidden = false;
  }

  // -- start / stop ----------------------------------------------------------------------
  async function start() {
    showError("");
    const [w, h] = ui.size.value.split("x").map(Number);
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: w, height: h }, audio: false });
    } catch (err) {
      showError(`no camera: ${err.message} (cameras need https:// or localhost)`);
      return;
    }
    ui.local.srcObject = state.stream;
    await ui.local.play().catch(() => {});
    state.running = true; state.transport = ui.transport.value;
    ui.start.disabled = true; ui.stop.disabled = false; ui.transport.disabled = true;
    try {
      if (state.transport.startsWith("webrtc")) await startWebrtc(state.transport === "webrtc-vp8" ? "VP8" : "H264");
      else { ui.out.hidden = false; ui.remote.hidden = true; startWs(state.transport === "ws-rgba" ? "rgba" : "jpeg"); }
    } catch (err) { showError(String(err.message || err)); stop(); }
  }

  function stop() {
    state.running = false; state.inFlight = 0;
    if (state.ws) state.ws.close(); state.ws = null;
    if (state.dc && state.dc.readyState === "open") state.dc.send(JSON.stringify({ type: "bye" }));
    if (state.pc) state.pc.close(); state.pc = null; state.dc = null;
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    ui.start.disabled = false; ui.stop.disabled = true; ui.transport.disabled = false;
    setStatus("stopped");
  }

  ui.start.onclick = start;
  ui.stop.onclick = stop;
  ui.style.onchange = () => { state.chosenStyle = ui.style.value; sendControl({ type: "config", style: ui.style.value }); };
  ui.blend.onchange = () => {
    if (!ui.blend.value.trim()) return;
    state.chosenStyle = ui.blend.value.trim();
    sendControl({ type: "config", style: state.chosenStyle });
  };
  for (const el of [ui.strength, ui.steps, ui.temporal, ui.budget]) el.onchange = () => sendControl(settings());

  // -- the live panel ------------------------------------------------------------------------
  setInterval(() => {
    $("rtt50").textContent = GR.fmt(state.rtt.pct(50));
    $("rtt95").textContent = GR.fmt(state.rtt.pct(95));
    $("srv50").textContent = GR.fmt(state.server.pct(50));
    $("fps").textContent = state.running ? String(state.rate.fps) : "–";
    $("backend").textContent = state.backend;
    if (state.rttBatch.length) { sendControl({ type: "rtt", ms: state.rttBatch }); state.rttBatch = []; }
    if (state.running) sendControl({ type: "stats" });
  }, 500);

  // -- the server's own source, when it has one ---------------------------------------------
  async function watchSource() {
    let info;
    try { info = await GR.api("/api/info"); } catch (err) { showError(String(err.message)); return; }
    const b = document.getElementById("budget");
    for (const name of info.budgets.slice(1)) b.append(new Option(name, name));
    if (!info.camera) { ui.start.disabled = true; setStatus("watching the server's stream"); }
    if (!info.source && info.camera) return;
    $("source-fig").hidden = false;
    $("source-cap").textContent = `server source: ${info.source_spec || "stream"}`;
    const canvas = $("source"), ctx = canvas.getContext("2d");
    const ws = new WebSocket(GR.wsUrl("?mode=watch"));
    ws.binaryType = "arraybuffer";
    ws.onmessage = async (e) => {
      if (typeof e.data === "string") return;
      const { header, payload } = GR.unpack(e.data);
      const image = await GR.decodeImage(header, payload);
      if (canvas.width !== header.w || canvas.height !== header.h) { canvas.width = header.w; canvas.height = header.h; }
      ctx.drawImage(image, 0, 0);
      image.close();
      if (hooks.onSource) hooks.onSource(header, canvas);
    };
  }
  watchSource();
  // the style picker is filled before the camera starts (the session's hello message refreshes it)
  GR.api("/api/styles").then((r) => {
    if (!state.styles.length) fillStyles(r.styles, shownStyle(r.styles, r.styles[0]));
    // only the refine steps the model's manifest measured as helping (none for the teacher or identity)
    ui.steps.replaceChildren(new Option("default", ""), ...(r.steps || []).map((k) => new Option(String(k), String(k))));
    ui.steps.disabled = !(r.steps || []).length;
  })
    .catch((err) => showError(String(err.message)));
})();
