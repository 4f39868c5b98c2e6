// genreal serve · headset page (WebXR). Three ways in, best first:
//   immersive-ar + camera-access (Quest Browser's Raw Camera Access): each eye's camera image is read back,
//     packed side by side and sent up (stereo);
//   immersive-vr + getUserMedia: the browser's camera (?stereo=sbs: a side-by-side stereo camera);
//   the server's own source (genreal serve --source sbs:...), in a headset or on this page;
//   without WebXR (a desktop browser): the browser's camera, restyled flat on this page.
// Every frame goes up tagged with the head pose (each eye's transform and projection) and capture time and
// comes back with the same tag. The restyled picture is drawn on a quad placed DIST metres inside the frustum
// it was captured from (a camera other than the headset's keeps its aspect, letterboxed), in world space: the
// compositor's current head pose moves it, so head motion does not drag the picture. Stereo frames: the left half goes to the left eye, the right half to the right eye.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const DIST = 2.0;  // metres from the eye at capture
  const state = {
    session: null, mode: null, ws: null, refSpace: null, gl: null, binding: null, nextId: 0, inFlight: 0,
    frame: null, lastEcho: null, sentPoses: {}, rtt: new GR.Rolling(), rate: new GR.Rate(), readback: null,
    probe: false, video: null, stereoCamera: params.get("stereo") === "sbs", cameraFrames: 0, xrFrames: 0,
  };
  window.genrealXR = state;
  const status = (t) => { $("status").textContent = t; };
  const error = (t) => { $("error").textContent = t || ""; };

  // -- GL: the quad in its capture frustum, and the camera-image blit ---------------------------------
  const VS = `attribute vec2 a; uniform mat4 capView, proj, view; uniform vec4 capProj, uvRect; uniform vec2 fit;
    uniform float dist; varying vec2 uv;
    void main() {
      vec2 q = a * fit;  // the part of the capture frustum the picture covers (its aspect kept)
      vec3 p = vec3(dist * (q.x + capProj.z) / capProj.x, dist * (q.y + capProj.w) / capProj.y, -dist);
      gl_Position = proj * view * capView * vec4(p, 1.0);
      vec2 t = a * 0.5 + 0.5;  // the texture holds the image top row first (v = 0 at the top)
      uv = vec2(mix(uvRect.x, uvRect.z, t.x), mix(uvRect.y, uvRect.w, 1.0 - t.y));
    }`;
  const FS = `precision mediump float; uniform sampler2D tex; varying vec2 uv;
    void main() { gl_FragColor = texture2D(tex, uv); }`;
  const BLIT_VS = `attribute vec2 a; varying vec2 uv; void main() { uv = a * 0.5 + 0.5; gl_Position = vec4(a, 0.0, 1.0); }`;
  const IDENT = new Float32Array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);

  function program(gl, vs, fs) {
    const p = gl.createProgram();
    for (const [type, src] of [[gl.VERTEX_SHADER, vs], [gl.FRAGMENT_SHADER, fs]]) {
      const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      gl.attachShader(p, s);
    }
    gl.bindAttribLocation(p, 0, "a"); gl.linkProgram(p);
    if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
    return p;
  }
  function setupGl(gl) {
    state.quad = program(gl, VS, FS);
    state.blit = program(gl, BLIT_VS, FS);
    state.vbo = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, state.vbo);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    state.tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, state.tex);
    for (const [k, v] of [[gl.TEXTURE_MIN_FILTER, gl.LINEAR], [gl.TEXTURE_MAG_FILTER, gl.LINEAR],
                          [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE]]) gl.texParameteri(gl.TEXTURE_2D, k, v);
    state.fbo = gl.createFramebuffer(); state.fboTex = null; state.fboSize = [0, 0];
    state.uni = {};
    for (const n of ["capView", "proj", "view", "capProj", "uvRect", "fit", "dist", "tex"]) state.uni[n] = gl.getUniformLocation(state.quad, n);
  }
  const poseOf = (views) => ({ views: views.map((v) => ({ eye: v.eye, transform: Array.from(v.transform.matrix),
                                                         projection: Array.from(v.projectionMatrix) })) });

  // -- capture: what goes up ------------------------------------------------------------------------
  const up = document.createElement("canvas");
  const upCtx = up.getContext("2d", { willReadFrequently: true });
  async function sendCanvas(pose, stereo) {
    const t = performance.now(), id = state.nextId++;
    const blob = await new Promise((r) => up.toBlob(r, "image/jpeg", 0.85));
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) { state.inFlight = 0; return; }
    const header = { id, t, fmt: "jpeg", w: up.width, h: up.height, stereo };
    if (pose) { state.sentPoses[id] = pose; header.pose = pose; }  // flat (no WebXR): no head pose
    state.ws.send(GR.pack(header, await blob.arrayBuffer()));
  }
  function captureVideo(pose) {  // immersive-vr: the browser camera
    const v = state.video;
    if (!v || !v.videoWidth) return false;
    up.width = v.videoWidth; up.height = v.videoHeight;
    upCtx.drawImage(v, 0, 0);
    sendCanvas(pose, state.stereoCamera);
    return true;
  }
  function captureCameras(views, pose) {  // immersive-ar: Raw Camera Access, one camera image per eye
    const gl = state.gl, cams = views.filter((v) => v.camera);
    if (!cams.length) return false;
    const w = cams[0].camera.width, h = cams[0].camera.height, W = w * cams.length;
    if (state.fboSize[0] !== W || state.fboSize[1] !== h) {
      state.fboTex = gl.createTexture(); gl.bindTexture(gl.TEXTURE_2D, state.fboTex);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, W, h, 0, gl.RGBA, gl.UNSIGNED_BYTE, null);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
      gl.bindFramebuffer(gl.FRAMEBUFFER, state.fbo);
      gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, state.fboTex, 0);
      state.fboSize = [W, h]; state.pixels = new Uint8Array(W * h * 4);
    }
    gl.bindFramebuffer(gl.FRAMEBUFFER, state.fbo);
    gl.useProgram(state.blit);
    gl.bindBuffer(gl.ARRAY_BUFFER, state.vbo); gl.enableVertexAttribArray(0); gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
    cams.forEach((v, i) => {
      const tex = state.binding.getCameraImage(v.camera);
      gl.viewport(i * w, 0, w, h);
      gl.activeTexture(gl.TEXTURE0); gl.bindTexture(gl.TEXTURE_2D, tex);
      gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
    });
    gl.readPixels(0, 0, W, h, gl.RGBA, gl.UNSIGNED_BYTE, state.pixels);
    state.cameraFrames++;
    const img = new ImageData(W, h), row = W * 4;  // GL rows run bottom-up: flip them
    for (let y = 0; y < h; y++) img.data.set(state.pixels.subarray((h - 1 - y) * row, (h - y) * row), y * row);
    up.width = W; up.height = h; upCtx.putImageData(img, 0, 0);
    sendCanvas(pose, cams.length === 2);
    return true;
  }

  // -- what comes back ----------------------------------------------------------------------------------
  async function onFrameMessage(e) {
    if (typeof e.data === "string") {
      const msg = JSON.parse(e.data);
      if (msg.type === "error") error(msg.message);
      return;
    }
    const { header, payload } = GR.unpack(e.data);
    const bitmap = await GR.decodeImage(header, payload);
    if (header.t !== undefined) { state.rtt.add(performance.now() - header.t); state.inFlight = 0; }
    state.rate.tick();
    state.lastEcho = header;
    if (header.notice) error(header.notice);  // --cluster: "restarted on another worker"
    const gl = state.gl;
    if (gl && state.session) {
      gl.bindTexture(gl.TEXTURE_2D, state.tex);  // no UNPACK_FLIP_Y: WebGL ignores it for ImageBitmaps
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, bitmap);
      state.frame = { id: header.id, w: header.w, h: header.h, stereo: !!header.stereo, pose: header.pose || null };
    } else {
      const flat = $("flat"), ctx = flat.getContext("2d");
      flat.hidden = false;
      if (flat.width !== header.w || flat.height !== header.h) { flat.width = header.w; flat.height = header.h; }
      ctx.drawImage(bitmap, 0, 0);
    }
    if (bitmap.close) bitmap.close();
  }
  function connect(query = "") {
    const ws = new WebSocket(GR.wsUrl(query));
    ws.binaryType = "arraybuffer";
    ws.onmessage = onFrameMessage;
    ws.onclose = (e) => { if (e.reason) error(e.reason); };
    state.ws = ws;
    return new Promise((resolve) => { ws.onopen = resolve; });
  }

  // -- the XR frame loop ----------------------------------------------------------------------------------
  function draw(view, viewport) {
    const gl = state.gl, f = state.frame, u = state.uni;
    gl.viewport(viewport.x, viewport.y, viewport.width, viewport.height);
    if (!f) return;
    const captured = f.pose && (f.pose.views.find((v) => v.eye === view.eye) || f.pose.views[0]);
    const capView = captured ? new Float32Array(captured.transform) : view.transform.matrix;  // no tag: head-locked
    const P = captured ? captured.projection : view.projectionMatrix;
    gl.useProgram(state.quad);
    gl.uniformMatrix4fv(u.capView, false, capView);
    gl.uniformMatrix4fv(u.proj, false, view.projectionMatrix);
    gl.uniformMatrix4fv(u.view, false, view.transform.inverse.matrix);
    gl.uniform4f(u.capProj, P[0], P[5], P[8], P[9]);
    const half = f.stereo ? (view.eye === "right" ? [0.5, 0, 1, 1] : [0, 0, 0.5, 1]) : [0, 0, 1, 1];
    gl.uniform4f(u.uvRect, ...half);
    // Raw Camera Access images are the view's own frustum; any other camera keeps its aspect inside it
    const aspect = (f.stereo ? f.w / 2 : f.w) / f.h, frustum = P[5] / P[0];
    const fit = state.mode === "ar-camera" ? [1, 1] : aspect > frustum ? [1, frustum / aspect] : [aspect / frustum, 1];
    gl.uniform2f(u.fit, ...fit);
    gl.uniform1f(u.dist, DIST);
    gl.uniform1i(u.tex, 0);
    gl.activeTexture(gl.TEXTURE0); gl.bindTexture(gl.TEXTURE_2D, state.tex);
    gl.bindBuffer(gl.ARRAY_BUFFER, state.vbo); gl.enableVertexAttribArray(0); gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }
  function onXRFrame(time, frame) {
    const session = frame.session;
    session.requestAnimationFrame(onXRFrame);
    const pose = frame.getViewerPose(state.refSpace);
    if (!pose) return;
    state.xrFrames++;
    const gl = state.gl, layer = session.renderState.baseLayer;
    if (state.mode !== "watch" && state.inFlight === 0 && state.ws && state.ws.readyState === WebSocket.OPEN) {
      const tag = poseOf(pose.views);
      let sent = state.mode === "ar-camera" && !state.video ? captureCameras(pose.views, tag) : captureVideo(tag);
      if (!sent && state.mode === "ar-camera" && !state.video && !state.videoAsked) {
        // no camera-access image: Quest Browser also offers the headset cameras as a media device
        state.videoAsked = true;
        startVideo().catch((err) => error(`no camera image from camera-access nor getUserMedia: ${err.message}`));
      }
      if (sent) state.inFlight = 1;
    }
    gl.bindFramebuffer(gl.FRAMEBUFFER, layer.framebuffer);
    gl.clearColor(0, 0, 0, 1); gl.clear(gl.COLOR_BUFFER_BIT);
    const readback = {};
    for (const view of pose.views) {
      const vp = layer.getViewport(view);
      draw(view, vp);
      if (state.probe) {  // tests: the pixels at the centre and near the top of each eye's viewport
        const px = new Uint8Array(4);
        gl.readPixels(vp.x + (vp.width >> 1), vp.y + (vp.height >> 1), 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
        readback[view.eye] = Array.from(px);
        gl.readPixels(vp.x + (vp.width >> 1), vp.y + Math.floor(vp.height * 0.8), 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
        readback[`${view.eye}_top`] = Array.from(px);  // near the top of the eye's view
      }
    }
    if (state.probe) state.readback = readback;
  }

  async function startVideo() {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 }, audio: false });
    const video = document.createElement("video");
    video.muted = true; video.playsInline = true; video.srcObject = stream;
    await video.play();
    state.video = video;
  }

  async function enter(mode) {
    error("");
    try {
      if (mode === "vr-camera") await startVideo();
      const xrMode = mode === "ar-camera" ? "immersive-ar" : "immersive-vr";
      const session = await navigator.xr.requestSession(xrMode, {
        requiredFeatures: ["local"], optionalFeatures: mode === "ar-camera" ? ["camera-access"] : [] });
      state.session = session; state.mode = mode;
      const canvas = document.createElement("canvas");
      const gl = canvas.getContext("webgl2", { xrCompatible: true }) || canvas.getContext("webgl", { xrCompatible: true });
      state.gl = gl;
      setupGl(gl);
      if (mode === "ar-camera") state.binding = new XRWebGLBinding(session, gl);
      session.updateRenderState({ baseLayer: new XRWebGLLayer(session, gl) });
      state.refSpace = await session.requestReferenceSpace("local");
      session.addEventListener("end", () => { state.session = null; status("session ended"); if (state.ws) state.ws.close(); });
      await connect(mode === "watch" ? "?mode=watch" : "");
      $("mode").textContent = mode;
      status(`${xrMode} · ${mode}`);
      session.requestAnimationFrame(onXRFrame);
    } catch (err) {
      error(`${mode}: ${err.message || err}`);
      status("could not start");
    }
  }

  // No WebXR: the browser's camera goes up and the restyled picture is drawn on the flat canvas.
  async function flatCamera() {
    error("");
    try { await startVideo(); } catch (err) {
      error(`no camera: ${err.message} (cameras need https:// or localhost)`); return;
    }
    await connect();
    $("enter-vr").disabled = true;
    state.mode = "camera-flat";
    $("mode").textContent = "browser camera (flat)";
    status("browser camera, restyled flat on this page (no WebXR here)");
    const loop = () => {
      if (!state.ws || state.ws.readyState > WebSocket.OPEN) return;
      if (state.inFlight === 0 && captureVideo(null)) state.inFlight = 1;
      requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  }

  async function init() {
    let info = { source: false };
    try { info = await GR.api("/api/info"); } catch (err) { error(String(err.message)); }
    const xr = navigator.xr;
    const ar = xr ? await xr.isSessionSupported("immersive-ar").catch(() => false) : false;
    const vr = xr ? await xr.isSessionSupported("immersive-vr").catch(() => false) : false;
    $("enter-ar").disabled = !ar || !info.camera;
    $("enter-vr").disabled = !info.camera;  // without immersive-vr: the browser camera, flat on this page
    if (!vr) $("enter-vr").textContent = "Browser camera · flat (no WebXR)";
    $("enter-watch").disabled = !info.source;
    $("enter-ar").onclick = () => enter("ar-camera");
    $("enter-vr").onclick = () => (vr ? enter("vr-camera") : flatCamera());
    $("enter-watch").onclick = () => (vr ? enter("watch") : connect("?mode=watch").then(() => { $("mode").textContent = "watch (flat)"; }));
    const flat = [info.camera && "the browser camera", info.source && "the server source"].filter(Boolean);
    status(ar || vr ? `WebXR: ${[ar && "immersive-ar", vr && "immersive-vr"].filter(Boolean).join(", ")}`
                    : `no WebXR here${flat.length ? `: ${flat.join(" or ")} can be watched flat on this page` : ""}`);
    setInterval(() => {
      $("rtt50").textContent = GR.fmt(state.rtt.pct(50)); $("rtt95").textContent = GR.fmt(state.rtt.pct(95));
      $("fps").textContent = String(state.rate.fps);
    }, 500);
  }
  init();
})();
