"""The keyframe detail layer: the teacher paints keyframes, optical flow carries their detail between.

    layer = DetailLayer(DetailConfig(mode="on"), teacher)      # teacher: uint8 RGB → uint8 RGB
    outs, st = layer.apply(inputs, student_outputs)             # per frame, uint8 RGB in and out

At a keyframe k the teacher (its own thread: `KeyframeWorker`, never blocking the frame loop) restyles
the input; the residual ``teacher(k) − student(k)`` becomes the **anchor** detail. Every later frame t
shows ``student(t) + C_t · R_anchor(D_t)``:

- ``D_t`` maps each pixel of frame t to where it was in the anchor frame: OpenCV DIS flow t → t−1 on
  grey frames at a quarter of the size, **composed** frame to frame (``D_t(p) = f(p) + D_{t−1}(p + f(p))``),
  its drift corrected against the anchor frame by a small DIS flow (`anchor_gain`; `direct` re-estimates
  it against the anchor instead: measured a little worse, docs/detail.md). The anchor residual is sampled once
  per frame through the composed map, never re-sampled from the previous frame's result, so strokes keep
  their sharpness however long they are carried.
- ``C_t`` is the per-pixel confidence (at the flow's size): the chain's validity since the anchor
  (each step's photometric check, or forward-backward consistency with `fb_check`; monotone: once the flow
  failed at a pixel, its carried
  detail is wrong until a keyframe replaces it), the photometric agreement of frame t with the anchor
  frame warped by ``D_t`` (drops at once, rises a step per frame: no flicker, fades in), how much the map
  stretches (`stretch`: strokes dragged into smears), and the pixel's age in moving frames (fades the last
  quarter of ``max_age``). A disocclusion therefore shows the
  student's own look, not a ghost of what covered it.
- A keyframe's residual replaces the anchor only where the carried detail's confidence is low or it is
  old, with a smooth seam (dilated and blurred weight); elsewhere the carried strokes stay put. The new
  anchor lives at the keyframe's frame; the map from there to the present was composed while the teacher
  ran (the "pending" chain), so a late keyframe lands where its content now is.
- A still scene settles: where nothing within `still_reach_px` changed by more than the sensor's noise
  (`still_grey`), the flow is none (DIS on noise alone returns coherent sub-pixel flow, so its size cannot
  tell), so the map, the confidence and the age stay exactly as they are and the output stops changing; a
  frame where nothing changed anywhere skips the flow altogether.
- The temporal filter (`blend`): where detail is carried and the input itself warps well from the last
  frame, that share of the last output, warped to this frame, is mixed in (`kernels.detail.warp_blend`).
- Keyframes are asked for by low-confidence fraction, age and scene cuts, at most one every
  `keyframe_every` frames (a cut bypasses the cap and drops the carried detail at once). A keyframe that
  landed later than the cap makes the next ones half-size until full size would fit; the budget's
  pressure (`set_pressure`) halves them and their rate, then stops them.

Stereo: one keyframe decision for both eyes, flow and state per eye. Nothing heavy runs at import.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from genreal_errors import UserError
from kernels.detail import detail_add, warp_blend, warp_by_flow
from realtime.histogram import LatencyHistogram

log = logging.getLogger(__name__)

DETAIL_MODES = ("off", "auto", "on")
FLOW_PRESETS = ("ultrafast", "fast", "medium")

Teacher = Callable[[np.ndarray], np.ndarray]  # uint8 (H, W, 3) RGB → the same


@dataclass(frozen=True)
class DetailConfig:
    """How the detail layer runs (`--detail`, `--keyframe-every`; the rest are its tuned defaults)."""

    mode: str = "off"  # off | auto (on where a teacher can run for the style) | on
    keyframe_every: int = 8  # the cap: at most one keyframe every N frames
    max_age: int = 48  # moving frames a pixel's carried detail lives before it is repainted
    low_conf_frac: float = 0.08  # ask for a keyframe when this share of the frame lacks detail
    flow_scale: float = 0.25  # the flow's size relative to the frame (0.5: about the same figures at 1.6x the cost)
    flow_preset: str = "ultrafast"  # OpenCV DIS preset (medium: steadier on bikes.mp4 but ~30x the cost, over budget)
    flow_refine: Optional[int] = None  # DIS variational refinement iterations (None: the preset's)
    still_grey: float = 3.0  # grey levels (flow size, over 3 px) a frame must change by to count as moving ...
    still_reach_px: float = 24.0  # ... anywhere within this distance (frame px); elsewhere the flow is none
    fb_check: bool = False  # forward-backward consistency (a second DIS a frame), else the step's photometric check
    step_grey: float = 20.0  # without fb_check: a step's warp error (grey levels over 3 px) that fails it
    direct: bool = False  # the map re-estimated against the anchor frame each moving frame (DIS seeded with the composed one)
    anchor_gain: float = 0.5  # share of the drift against the anchor frame corrected per frame (0: none)
    blend: float = 0.6  # the last output's weight (warped) where the input warps well: a temporal filter (0: none)
    stretch: float = 0.25  # the map's summed |gradient| at which carried detail starts fading (gone at twice it)
    rise: float = 0.2  # confidence regained per frame (fade-in; drops are immediate)
    seam_px: float = 12.0  # softness of a keyframe's replacement seam (frame px)
    cut_frac: float = 0.5  # a frame where under this share of the flow checks pass is a scene cut
    teacher_threads: int = 1  # ONNX Runtime threads of the keyframe teacher (the frame loop keeps the rest)
    synchronous: bool = False  # tests and offline use: the keyframe is painted inline (blocks the frame)
    latency_frames: int = 0  # synchronous only: the keyframe lands this many frames after it was taken

    def __post_init__(self) -> None:
        if self.mode not in DETAIL_MODES:
            raise UserError(f"bad --detail {self.mode!r}: use off, auto or on")
        if not 1 <= int(self.keyframe_every) <= 10_000:
            raise UserError(f"bad --keyframe-every {self.keyframe_every}: give a number of frames, 1 or more")
        if self.max_age < 1 or not 0 < self.low_conf_frac <= 1 or not 0 < self.flow_scale <= 1:
            raise UserError("detail layer: max_age ≥ 1, low_conf_frac in (0, 1] and flow_scale in (0, 1]")
        if not 0 <= self.blend < 1:
            raise UserError("detail layer: blend must be in [0, 1)")
        if self.flow_preset not in FLOW_PRESETS:
            raise UserError(f"detail layer: flow_preset must be one of {', '.join(FLOW_PRESETS)}")


@dataclass(frozen=True)
class DetailStats:
    """What the layer did on one frame."""

    keyframe: bool  # a keyframe landed on this frame
    requested: bool  # a keyframe was asked for on this frame
    keyframe_age: int  # frames since the newest keyframe in the anchor was taken (-1: none yet)
    confidence: float  # share of pixels that show carried detail (confidence over 0.5)
    cut: bool  # a scene cut dropped the carried detail
    ms: float  # the layer's time on this frame (flow, confidence, warp, add)
    level: int = 0  # the budget's pressure on it (`DetailLayer.set_pressure`)


HISTORY = 1024  # DetailLayer.history: the last frames' records kept
KEYFRAME_SCALES = (1.0, 0.5, 0.5)  # per pressure level, the size the teacher paints a keyframe at


class _Totals:
    """A run's detail figures as running totals and latency histograms (fixed memory for any run length)."""

    def __init__(self) -> None:
        self.frames = self.keyframes = self.requested = self.cuts = self.aged = 0
        self.confidence = self.age = 0.0
        self.ms, self.teacher_ms = LatencyHistogram(), LatencyHistogram()
        self.levels = [0, 0, 0]  # frames at each budget pressure level
        self.small = 0  # keyframes painted at half size

    def add(self, st: DetailStats) -> None:
        self.frames += 1
        self.keyframes += st.keyframe
        self.requested += st.requested
        self.cuts += st.cut
        self.confidence += st.confidence
        self.levels[st.level] += 1
        if st.keyframe_age >= 0:
            self.age += st.keyframe_age
            self.aged += 1
        self.ms.add(st.ms)


@dataclass(frozen=True)
class _Job:
    """A keyframe asked for: the frame's inputs and the student's outputs on it."""

    serial: int
    inputs: tuple[np.ndarray, ...]
    outputs: tuple[np.ndarray, ...]
    scale: float = 1.0  # the teacher paints a frame this size (relative), upscaled back


@dataclass(frozen=True)
class _Painted:
    serial: int
    residuals: tuple[np.ndarray, ...]  # float32 (H, W, 3): teacher − student, per eye
    ms: float
    scale: float = 1.0  # the size it was painted at


class KeyframeWorker:
    """The teacher on its own thread: one job at a time; `submit` never waits, `poll` never waits."""

    def __init__(self, teacher: Teacher) -> None:
        self._teacher = teacher
        self._jobs: "queue.Queue[Optional[_Job]]" = queue.Queue(maxsize=1)
        self._done: "queue.Queue[_Painted]" = queue.Queue()
        self._busy = threading.Event()
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._loop, name="detail-keyframes", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def submit(self, job: _Job) -> bool:
        """Hand a keyframe to the teacher; False (and nothing queued) while it is still painting one."""
        if self._busy.is_set() or self.error is not None:
            return False
        self._busy.set()
        self._jobs.put_nowait(job)
        return True

    def poll(self) -> Optional[_Painted]:
        try:
            return self._done.get_nowait()
        except queue.Empty:
            return None

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._done.put(paint(self._teacher, job))
            except Exception as exc:  # a failing teacher turns the layer off, never the run
                log.warning("detail layer: the keyframe teacher failed (%s); showing the student alone", exc)
                self.error = exc
            finally:
                self._busy.clear()

    def close(self) -> None:
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=5.0)


def paint(teacher: Teacher, job: _Job) -> _Painted:
    t0 = time.perf_counter()
    res = tuple(paint_at_scale(teacher, img, job.scale).astype(np.float32) - out.astype(np.float32)
                for img, out in zip(job.inputs, job.outputs))
    return _Painted(job.serial, res, (time.perf_counter() - t0) * 1e3, job.scale)


def paint_at_scale(teacher: Teacher, img: np.ndarray, scale: float) -> np.ndarray:
    """The teacher's picture of `img` painted at `scale` of its size (area filter, sides floored) and brought
    back to it (bicubic): a half-size keyframe, and the benchmarks' half-size teacher."""
    if scale >= 1.0:
        return teacher(img)
    import cv2

    h, w = img.shape[:2]
    small = cv2.resize(img, (max(8, int(w * scale)), max(8, int(h * scale))), interpolation=cv2.INTER_AREA)
    return cv2.resize(teacher(small), (w, h), interpolation=cv2.INTER_CUBIC)


def _edge_fixed(img: np.ndarray) -> np.ndarray:
    """A copy of uint8 (H, W, 3) `img` with its outermost rows and columns replaced by their neighbours."""
    if img.shape[0] < 3 or img.shape[1] < 3:
        return img
    out = np.array(img)
    out[0], out[-1] = out[1], out[-2]
    out[:, 0], out[:, -1] = out[:, 1], out[:, -2]
    return out


def _changed(grey: np.ndarray, prev: np.ndarray, floor: float, reach: int) -> np.ndarray:
    """bool (h, w): the pixels within `reach` px of a change between two grey frames (the absolute
    difference averaged over 3 px above `floor` levels: over a camera's sensor noise)."""
    import cv2

    diff = cv2.blur(cv2.absdiff(grey, prev), (3, 3))
    near = cv2.dilate(diff, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * reach + 1, 2 * reach + 1)))
    return near > floor


def _sq(v: np.ndarray) -> np.ndarray:
    """|v|² of a (h, w, 2) float32 field, (h, w)."""
    import cv2

    return cv2.transform(cv2.multiply(v, v), np.ones((1, 2), np.float32))


class _Chain:
    """A composed map from the present frame to an anchor frame, at the flow's size, with its state."""

    def __init__(self, hw: tuple[int, int]) -> None:
        h, w = hw
        self.disp = np.zeros((h, w, 2), np.float32)  # anchor position − present position (flow px)
        self.valid = np.ones((h, w), np.float32)  # the chain's forward-backward validity (monotone)
        self.photo = np.ones((h, w), np.float32)  # photometric agreement, smoothed in time
        self.age = np.zeros((h, w), np.float32)  # moving frames since the pixel's detail was painted
        self.frames = 0  # frames since the anchor frame


class _Eye:
    """One eye's flow and its anchor."""

    def __init__(self, cfg: DetailConfig, shape: tuple[int, int]) -> None:
        import cv2

        self.shape = shape  # (H, W)
        h, w = shape
        self.fhw = (max(8, int(round(h * cfg.flow_scale))), max(8, int(round(w * cfg.flow_scale))))
        preset = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                  "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}[cfg.flow_preset]
        self.dis = cv2.DISOpticalFlow_create(preset)
        self.direct = cv2.DISOpticalFlow_create(preset) if cfg.direct else None  # seeded with the composed map
        if cfg.flow_refine is not None:  # variational refinement: a smooth flow, not patchwise constant
            self.dis.setVariationalRefinementIterations(int(cfg.flow_refine))
        fh, fw = self.fhw
        self.grid = np.stack(np.meshgrid(np.arange(fw, dtype=np.float32), np.arange(fh, dtype=np.float32)), -1)
        self.grey: Optional[np.ndarray] = None  # the last frame's grey at the flow's size
        self.step: Optional[tuple[np.ndarray, np.ndarray]] = None  # this frame's (flow to the last, blend weight)
        self.shown: Optional[np.ndarray] = None  # the last output (the temporal blend's)
        self.residual: Optional[np.ndarray] = None  # the anchor's detail, float32 (H, W, 3)
        self.anchor_grey: Optional[np.ndarray] = None
        self.chain = _Chain(self.fhw)
        self.pending: Optional[_Chain] = None  # composed from the frame a keyframe was asked on
        self.pending_grey: Optional[np.ndarray] = None
        self.pending_state: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None  # (disp, conf, age) then

    def confidence(self, cfg: DetailConfig) -> np.ndarray:
        c = self.chain
        fade = np.clip((cfg.max_age - c.age) / max(1.0, 0.25 * cfg.max_age), 0.0, 1.0)
        return c.valid * c.photo * fade  # (h, w)


class DetailLayer:
    """Keyframe detail carried by flow (see the module docstring). One instance per stream."""

    def __init__(self, config: DetailConfig, teacher: Teacher) -> None:
        self.config = config
        self._teacher = teacher
        self._worker: Optional[KeyframeWorker] = None if config.synchronous else KeyframeWorker(teacher)
        self._eyes: list[_Eye] = []
        self._serial = 0  # keyframes asked for
        self._landed_serial = -1
        self._since_request = 10 ** 9  # frames since the last keyframe was asked for
        self._since_landing = 10 ** 9  # frames since the last keyframe landed
        self._anchor_age = -1  # frames since the newest keyframe in the anchor was taken
        self._pending_age = -1
        self._last_job: Optional[_Job] = None  # synchronous: the job just asked for
        self._held: Optional[tuple[int, _Painted]] = None  # synchronous: (frames to wait, the keyframe)
        self._level = 0  # the budget's pressure (set_pressure)
        self._lag = 0  # frames the last keyframe took from request to landing
        self._small = False  # keyframes at half size because full-size ones land too late (no budget needed)
        #: the last frames' records (bounded: a live run of any length keeps the same memory); the run's figures
        #: are kept as totals and histograms below
        self.history: deque[DetailStats] = deque(maxlen=HISTORY)
        self._totals = _Totals()

    # -- lifecycle ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the carried detail (style switch, seek). A keyframe in flight is discarded when it lands."""
        self._eyes = []
        self._held = None
        self._landed_serial = self._serial
        self._since_request = 10 ** 9
        self._anchor_age = self._pending_age = -1

    def set_pressure(self, level: int) -> None:
        """The budget controller's say (`realtime.backends.detail_backend.pressure_of`): 0 keyframes at full size, at most one every
        `keyframe_every` frames; 1 keyframes at half size (a quarter of the teacher's work) and half as
        often; 2 no new keyframes (the carried detail stays while the flow holds it, then the student's look)."""
        self._level = max(0, min(2, int(level)))

    @property
    def level(self) -> int:
        return self._level

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    # -- the frame -----------------------------------------------------------------------------------
    def apply(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], DetailStats]:
        """Inputs (camera, uint8 RGB) and the student's outputs on them → the outputs with detail, and stats."""
        t0 = time.perf_counter()
        cfg = self.config
        shapes = [img.shape[:2] for img in inputs]
        if not self._eyes or [e.shape for e in self._eyes] != shapes:
            self._eyes = [_Eye(cfg, s) for s in shapes]
            self._landed_serial = self._serial  # a keyframe in flight was for other frames
            self._anchor_age = self._pending_age = -1
        # the student's outermost rows and columns carry a line (its decoder's padding, 2-6x the frame's
        # gradient): the layer shows, and takes its residual against, the student with them replicated
        outputs = [_edge_fixed(o) for o in outputs]
        # 1. flow and the chains, per eye
        cut, low = False, 0.0
        for eye, img in zip(self._eyes, inputs):
            c, lo = self._advance(eye, img)
            cut |= c
            low = max(low, lo)
        if cut:
            for eye in self._eyes:
                eye.residual = None
                eye.pending = None
            self._landed_serial = self._serial
            self._anchor_age = self._pending_age = -1
        if self._anchor_age >= 0:
            self._anchor_age += 1
        if self._pending_age >= 0:
            self._pending_age += 1
        self._since_request += 1
        self._since_landing += 1
        # 2. a keyframe that landed
        landed = False
        painted = self._poll()
        if painted is not None and painted.serial > self._landed_serial:
            self._land(painted)
            landed = True
        # 3. ask for a keyframe
        requested = False
        has_anchor = self._eyes[0].residual is not None
        aged = has_anchor and max(float(np.mean(e.chain.age >= 0.75 * cfg.max_age)) for e in self._eyes) > cfg.low_conf_frac
        fading = self._since_landing <= int(np.ceil(1.0 / cfg.rise))  # a fresh keyframe still fading in
        want = cut or not has_anchor or (low > cfg.low_conf_frac and not fading) or aged
        in_flight = self._eyes[0].pending is not None
        cap = cfg.keyframe_every * (2 if self._level == 1 else 1)
        if want and not in_flight and self._level < 2 and (cut or self._since_request >= cap):
            requested = self._request(inputs, outputs)
        if requested and cfg.synchronous:  # inline: painted now, landing `latency_frames` frames later
            done = paint(self._teacher, self._last_job)
            self._last_job = None
            self._totals.teacher_ms.add(done.ms)
            self._held = (cfg.latency_frames, done)
        if self._held is not None and self._held[1].serial > self._landed_serial:
            wait, done = self._held
            if wait <= 0:
                self._land(done)
                self._held = None
                landed = True
            else:
                self._held = (wait - 1, done)
        # 4. the detail on the student's output
        outs, conf = [], 0.0
        for eye, out in zip(self._eyes, outputs):
            shown, frac = self._compose(eye, out)
            if cfg.blend > 0 and eye.residual is not None:  # the carried detail's temporal filter
                shown = self._blend(eye, shown)
            else:
                eye.shown = None
            outs.append(shown)
            conf += frac / len(self._eyes)
        st = DetailStats(keyframe=landed, requested=requested, keyframe_age=self._anchor_age, confidence=round(conf, 4),
                         cut=cut, ms=(time.perf_counter() - t0) * 1e3, level=self._level)
        self.history.append(st)
        self._totals.add(st)
        return outs, st

    # -- steps -----------------------------------------------------------------------------------------
    def _advance(self, eye: _Eye, img: np.ndarray) -> tuple[bool, float]:
        """Flow from the last frame to this one, composed into the chains. → (scene cut, low-confidence share)."""
        import cv2

        cfg = self.config
        fh, fw = eye.fhw
        grey = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (fw, fh), interpolation=cv2.INTER_AREA)
        prev, eye.grey = eye.grey, grey
        eye.step = None
        if prev is None or eye.residual is None and eye.pending is None:
            return False, 1.0
        # a still pixel: nothing near it changed beyond the sensor's noise → no motion at all (the scene
        # settles; DIS on noise alone returns coherent sub-pixel flow, so the flow's size cannot tell)
        moved = _changed(grey, prev, cfg.still_grey, max(1, int(round(cfg.still_reach_px * cfg.flow_scale))))
        any_moved = bool(moved.any())
        if not any_moved:  # a still frame: no flow to compute, nothing carried moves
            back = np.zeros((fh, fw, 2), np.float32)
            ok = np.ones((fh, fw), np.float32)
            m = eye.grid
            prev_at = prev
        else:
            back = eye.dis.calc(grey, prev, None)  # p of this frame sits at p + back(p) in the last one
            m = eye.grid + back
            prev_at = cv2.remap(prev, m, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            if cfg.fb_check:  # forward-backward consistency: a second flow, the other way
                fwd = eye.dis.calc(prev, grey, None)
                fwd_at = cv2.remap(fwd, m, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                slack = 2.0 * cfg.flow_scale ** 2  # 1.4 frame px of disagreement, in flow px²
                ok = (_sq(back + fwd_at) <= 0.05 * (_sq(back) + _sq(fwd_at)) + slack).astype(np.float32)
            else:  # the step's own photometric check (one flow: cheaper)
                err = cv2.blur(cv2.absdiff(grey, prev_at).astype(np.float32), (3, 3))
                ok = (err < cfg.step_grey).astype(np.float32)
            ok = (cv2.blur(ok, (3, 3)) > 0.5).astype(np.float32)  # isolated failures are noise
            inside = (m[..., 0] >= 0) & (m[..., 0] <= fw - 1) & (m[..., 1] >= 0) & (m[..., 1] <= fh - 1)
            ok *= inside
            if cv2.countNonZero(ok) < cfg.cut_frac * ok.size:
                return True, 1.0
            back[~moved] = 0.0
            ok[~moved] = 1.0
            m = eye.grid + back
        moved_f = moved.astype(np.float32)
        if cfg.blend > 0:  # where the input itself warps well, the output may lean on the last one
            agree = ((cv2.absdiff(grey, prev_at) < 8) & (ok > 0)) | ~moved  # a still pixel always agrees: a
            agree = agree.astype(np.float32)  # weight that does not follow the noise, so the output settles
            eye.step = (back.copy(), cv2.blur(agree, (5, 5)) * cfg.blend)
        low = 0.0
        maps = cv2.convertMaps(m, None, cv2.CV_16SC2) if any_moved else None  # fixed point: shared, faster
        for chain, anchor_grey in ((eye.chain, eye.anchor_grey), (eye.pending, eye.pending_grey)):
            if chain is None or anchor_grey is None:
                continue
            self._compose_step(eye, chain, anchor_grey, back, maps, ok, moved_f, grey)
        if eye.residual is not None:
            low = cv2.countNonZero((eye.confidence(cfg) < 0.5).view(np.uint8)) / (fh * fw)
        return False, low

    def _compose_step(self, eye: _Eye, chain: _Chain, anchor_grey: np.ndarray, back: np.ndarray,
                      maps: Optional[tuple[np.ndarray, np.ndarray]], ok: np.ndarray, moved: np.ndarray,
                      grey: np.ndarray) -> None:
        import cv2

        cfg = self.config
        chain.frames += 1
        if maps is None:  # nothing moved
            photo = self._photo(eye, chain, anchor_grey, grey)
            chain.photo = np.minimum(photo, np.minimum(chain.photo + cfg.rise, 1.0))
            return
        chain.disp = back + cv2.remap(chain.disp, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if eye.direct is not None:  # re-estimated against the anchor frame itself, seeded with the composed map
            # (DIS writes its result into the seed it is given: a copy, so still pixels keep the composed map)
            chain.disp = eye.direct.calc(grey, anchor_grey, chain.disp.copy()) * moved[..., None] \
                + chain.disp * (1.0 - moved[..., None])
        elif cfg.anchor_gain > 0:
            self._correct(eye, chain, anchor_grey, grey, moved)
        # the per-pixel state rides the same step in one pass (outside the last frame: nothing carried)
        state = cv2.remap(cv2.merge([chain.valid, chain.age, chain.photo]), maps[0], maps[1], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        valid, age, carried = cv2.split(state)
        chain.valid = ok * valid
        chain.age = moved + age
        photo = self._photo(eye, chain, anchor_grey, grey)
        chain.photo = np.minimum(photo, np.minimum(carried + cfg.rise, 1.0))

    def _correct(self, eye: _Eye, chain: _Chain, anchor_grey: np.ndarray, grey: np.ndarray,
                 moved: np.ndarray) -> None:
        """Re-anchor the composed map: the small flow from this frame to the anchor frame warped by the map
        (what the composition drifted by), folded in with gain `anchor_gain` (drift corrected over a few
        frames, the flow's frame-to-frame noise damped)."""
        import cv2

        a = eye.grid + chain.disp
        warped = cv2.remap(anchor_grey, a, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        corr = eye.dis.calc(grey, warped, None) * self.config.anchor_gain  # p sits at p + corr in `warped`
        corr *= moved[..., None]  # still pixels stay exactly where they are
        c = eye.grid + corr
        chain.disp = corr + cv2.remap(chain.disp, c, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def _photo(self, eye: _Eye, chain: _Chain, anchor_grey: np.ndarray, grey: np.ndarray) -> np.ndarray:
        """Agreement of this frame with the anchor frame warped by the chain: 1 up to 12 grey levels
        (blurred), 0 from 36."""
        import cv2

        a = eye.grid + chain.disp
        warped = cv2.remap(anchor_grey, a, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        err = cv2.GaussianBlur(cv2.absdiff(warped, grey).astype(np.float32), (0, 0), 1.5)
        photo = np.clip((36.0 - err) / 24.0, 0.0, 1.0)
        if self.config.stretch > 0:  # a map that stretches or shears drags strokes into smears (flat areas
            # pass the photometric check whatever the flow): the map's spatial gradient, per flow px
            g = sum(np.abs(cv2.Sobel(chain.disp[..., i], cv2.CV_32F, dx, 1 - dx, ksize=3)) for i in (0, 1)
                    for dx in (0, 1)) * 0.125
            photo *= np.clip(1.0 - (g - self.config.stretch) / self.config.stretch, 0.0, 1.0)
        return photo

    def _poll(self) -> Optional[_Painted]:
        if self._worker is None:
            return None
        painted = None
        while True:  # the newest one
            p = self._worker.poll()
            if p is None:
                break
            painted = p
            self._totals.teacher_ms.add(p.ms)
        return painted

    def _request(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> bool:
        # a keyframe that takes longer than the cap to land cannot keep the cadence: paint at half size (a
        # quarter of the work) until full size would land within the cap again
        every = self.config.keyframe_every
        self._small = self._lag > every if not self._small else 4 * self._lag >= every
        scale = min(KEYFRAME_SCALES[self._level], 0.5 if self._small else 1.0)
        job = _Job(self._serial + 1, tuple(np.array(i) for i in inputs), tuple(np.array(o) for o in outputs),
                   scale=scale)
        if self._worker is not None and not self._worker.submit(job):
            return False
        self._serial += 1
        self._since_request = 0
        self._pending_age = 0
        if self.config.synchronous:
            self._last_job = job
        for eye in self._eyes:
            has = eye.residual is not None
            eye.pending = _Chain(eye.fhw)
            eye.pending_grey = eye.grey
            eye.pending_state = ((eye.chain.disp.copy(), eye.confidence(self.config), eye.chain.age.copy())
                                 if has else None)
        return True

    def _land(self, painted: _Painted) -> None:
        """A keyframe's residual replaces the anchor where the carried detail is weak or old."""
        import cv2

        cfg = self.config
        self._landed_serial = painted.serial
        self._since_landing = 0
        self._lag = max(0, self._pending_age)
        self._totals.small += painted.scale < 1.0
        for eye, res in zip(self._eyes, painted.residuals):
            if eye.pending is None or res.shape[:2] != eye.shape:
                continue
            h, w = eye.shape
            fh, fw = eye.fhw
            pend = eye.pending
            if eye.residual is None or eye.pending_state is None:
                eye.residual = res
                weight = np.ones(eye.fhw, np.float32)
                old_valid = old_photo = np.zeros(eye.fhw, np.float32)
                old_age = np.zeros(eye.fhw, np.float32)
            else:
                disp_k, conf_k, age_k = eye.pending_state
                hard = ((conf_k < 0.6) | (age_k >= 0.75 * cfg.max_age)).astype(np.uint8)
                r = max(1, int(round(cfg.seam_px * cfg.flow_scale / 2)))
                hard = cv2.dilate(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
                soft = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), r)
                weight_k = np.maximum(soft, 1.0 - conf_k)  # at frame k, 1 = the new keyframe's detail
                old_at_k = warp_by_flow(eye.residual, disp_k, 1.0 / cfg.flow_scale, cubic=True)  # one more sample: sharp
                wk_full = cv2.resize(weight_k, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
                eye.residual = old_at_k + wk_full * (res - old_at_k)
                # the weight as seen from the present frame, through the pending chain
                a = eye.grid + pend.disp
                weight = cv2.remap(weight_k, a, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                old_valid, old_photo, old_age = eye.chain.valid, eye.chain.photo, eye.chain.age
            new = _Chain(eye.fhw)
            new.disp = pend.disp
            new.valid = old_valid + weight * (pend.valid - old_valid)
            new.photo = np.minimum(old_photo + weight * (pend.photo - old_photo),
                                   old_photo + cfg.rise)  # newly painted detail fades in
            new.age = old_age + weight * (pend.age - old_age)
            new.frames = pend.frames
            eye.chain = new
            eye.anchor_grey = eye.pending_grey
            eye.pending = None
            eye.pending_grey = None
            eye.pending_state = None
        self._anchor_age = self._pending_age
        self._pending_age = -1

    def _compose(self, eye: _Eye, out: np.ndarray) -> tuple[np.ndarray, float]:
        import cv2

        if eye.residual is None:
            return out, 0.0
        conf = eye.confidence(self.config)
        frac = cv2.countNonZero((conf > 0.5).view(np.uint8)) / conf.size
        if not cv2.countNonZero(conf):
            return out, frac
        return detail_add(out, eye.residual, eye.chain.disp, conf, 1.0 / self.config.flow_scale), frac

    def _blend(self, eye: _Eye, shown: np.ndarray) -> np.ndarray:
        """The online temporal filter: the last output warped to this frame, mixed in where the input warps well."""
        last, eye.shown = eye.shown, shown
        if eye.step is None or last is None or last.shape != shown.shape:
            return shown
        back, weight = eye.step
        eye.shown = warp_blend(shown, last, back, weight, 1.0 / self.config.flow_scale)
        return eye.shown

    # -- summary -------------------------------------------------------------------------------------------
    def readout(self, window: int = 90) -> str:
        """One line for a HUD: keyframe age, keyframes per second of frames (the last `window`), the share
        of the frame with carried detail, the layer's ms, and the budget's pressure when it has any."""
        if not self.history:
            return ""
        recent = list(self.history)[-window:]
        last = recent[-1]
        rate = sum(st.keyframe for st in recent) / len(recent)
        age = f"{last.keyframe_age}f" if last.keyframe_age >= 0 else "none"
        level = ("  half-size keyframes" if self._small else "", "  half-size keyframes", "  keyframes paused")[last.level]
        return (f"detail: keyframe {age} ago  {rate:.2f}/frame  conf {100 * last.confidence:.0f}%  "
                f"{np.mean([st.ms for st in recent[-15:]]):.1f} ms{level}")

    def summary(self) -> dict[str, Any]:
        """The run's detail figures (for --stats-json)."""
        t = self._totals
        if not t.frames:
            return {}
        return {
            "frames": t.frames,
            "keyframes": t.keyframes,
            "keyframe_rate": round(t.keyframes / t.frames, 4),
            "keyframes_half_size": t.small,
            "requested": t.requested,
            "cuts": t.cuts,
            "confidence_mean": round(t.confidence / t.frames, 4),
            "keyframe_age_mean": round(t.age / t.aged, 2) if t.aged else 0.0,
            "ms": t.ms.summary(),
            "teacher_ms": t.teacher_ms.summary(),
            "frames_by_pressure": {"full": t.levels[0], "half_size_keyframes": t.levels[1], "paused": t.levels[2]},
        }
