"""The MIL reference's kernels: each op's numpy implementation and the validator that refuses forms it lacks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class UnknownMILOp(Exception):
    """The program contains an op type the reference interpreter does not implement."""

    def __init__(self, op_type: str, op_name: str | None = None, message: str | None = None) -> None:
        self.op_type = op_type
        self.op_name = op_name
        where = f" ({op_name})" if op_name else ""
        super().__init__(message or f"MIL op {op_type!r}{where} is not in the reference interpreter's allow-list")


class UnsupportedMILOp(UnknownMILOp):
    """An allow-listed op type used in a form that is not implemented (e.g. a 3-D conv, groups > 1).

    A subclass of :class:`UnknownMILOp` so callers that refuse unknown ops also refuse these."""

    def __init__(self, op_type: str, op_name: str | None, detail: str) -> None:
        where = f" ({op_name})" if op_name else ""
        super().__init__(op_type, op_name, f"MIL op {op_type!r}{where}: {detail} is not implemented by the reference interpreter")
        self.detail = detail


# ---- kernels -------------------------------------------------------------------------------------
#
# A kernel gets the op's input values by parameter name; absent
# optional inputs are simply missing, and the documented default is applied here. It returns the
# result in any dtype: the interpreter checks the shape against the program's declaration and
# stores it in the declared dtype (that is where fp16 rounding happens).
#
# A validator runs once at load time on the op (constant parameters are known then) and raises
# UnsupportedMILOp for forms that are not implemented, so nothing is guessed at run time.

_FLOATS = (np.float16, np.float32)


def _np_dtype(var) -> type:
    from coremltools.converters.mil.mil import types

    return types.nptype_from_builtin(var.dtype)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _const_param(op, name: str, default=None):
    """A parameter's constant value at load time (MIL requires these to be const)."""
    var = op.inputs.get(name)
    if var is None:
        return default
    if var.val is None:
        raise UnsupportedMILOp(op.op_type, op.name, f"non-constant parameter {name!r}")
    return var.val


def _require_float(op, *names: str) -> None:
    for n in names:
        var = op.inputs.get(n)
        if var is not None and _np_dtype(var) not in _FLOATS:
            raise UnsupportedMILOp(op.op_type, op.name, f"input {n!r} of dtype {np.dtype(_np_dtype(var)).name}")


def _broadcast_param(p: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """A scalar, or a vector laid along ``axis`` (quantization parameters)."""
    p = np.asarray(p)
    if p.ndim == 0:
        return p
    assert axis is not None  # a vector parameter comes with its axis (checked by _v_quant_params)
    shape = [1] * rank
    shape[axis] = -1
    return p.reshape(shape)


def _v_quant_params(op) -> None:
    scale = _const_param(op, "scale")
    axis = _const_param(op, "axis")
    if np.ndim(scale) > 1:
        raise UnsupportedMILOp(op.op_type, op.name, f"scale of rank {np.ndim(scale)}")
    if np.ndim(scale) == 1 and axis is None:
        raise UnsupportedMILOp(op.op_type, op.name, "a vector scale without axis")
    zp = _const_param(op, "zero_point")
    if zp is not None and np.ndim(zp) != np.ndim(scale):
        raise UnsupportedMILOp(op.op_type, op.name, "zero_point and scale of different ranks")


def _dequant(a: dict) -> np.ndarray:
    # scale * (q - zero_point): q - zp is an exact integer (|q - zp| <= 255); times an fp16 scale the
    # float32 product is exact and the store rounds it once to fp16 (the scale's dtype, declared as
    # the output's); times an fp32 scale it is rounded once to float32.
    q = a["input"] if "input" in a else a["quantized_data"]
    axis = a.get("axis")
    axis = None if axis is None else int(axis)
    x = q.astype(np.float32)
    zp = a.get("zero_point")
    if zp is not None:
        x = x - _broadcast_param(zp, q.ndim, axis).astype(np.float32)
    return x * _broadcast_param(a["scale"], q.ndim, axis).astype(np.float32)


_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def _v_quantize(op) -> None:
    _v_quant_params(op)
    _require_float(op, "input")
    if str(_const_param(op, "output_dtype")) not in _QRANGE:
        raise UnsupportedMILOp(op.op_type, op.name, f"output_dtype {_const_param(op, 'output_dtype')!r}")


def _quantize(a: dict) -> np.ndarray:
    x = a["input"]
    axis = a.get("axis")
    axis = None if axis is None else int(axis)
    # Division in the input's own dtype (fp16 / fp16 -> fp16), as coremltools' value inference
    # does; then round half to even, add the zero point, clip to the integer range.
    s = _broadcast_param(a["scale"], x.ndim, axis).astype(x.dtype)
    # fp16 / fp16 done in float32 and rounded to fp16 is exactly IEEE fp16 division (float32 has at
    # least 2 * 11 + 2 significand bits, so the double rounding is harmless) and much faster than
    # numpy's float16 loops.
    with np.errstate(over="ignore"):  # fp16 overflow -> inf, then clipped like any large value
        ratio = (_f32(x) / _f32(s)).astype(x.dtype)
    q = np.rint(ratio.astype(np.float32))  # ties to even; exact on the fp16 value, and faster
    zp = a.get("zero_point")
    if zp is not None:
        q = q + _broadcast_param(zp, x.ndim, axis).astype(np.float32)
    lo, hi = _QRANGE[str(a["output_dtype"])]
    return np.clip(q, lo, hi)


def _v_cast(op) -> None:
    # float <-> float only: float -> int rounding and bool semantics are not needed here, so they
    # are refused rather than guessed.
    if str(_const_param(op, "dtype")) not in ("fp16", "fp32"):
        raise UnsupportedMILOp(op.op_type, op.name, f"cast to {_const_param(op, 'dtype')!r}")
    _require_float(op, "x")


def _cast(a: dict) -> np.ndarray:
    return a["x"]  # the store converts to the declared dtype (fp32 -> fp16: round to nearest even)


def _v_conv(op) -> None:
    _require_float(op, "x", "weight", "bias")
    w = op.inputs["weight"]
    if w.rank != 4 or op.inputs["x"].rank != 4:
        raise UnsupportedMILOp(op.op_type, op.name, f"{w.rank - 2}-D convolution")
    if int(_const_param(op, "groups", 1)) != 1:
        raise UnsupportedMILOp(op.op_type, op.name, f"groups={int(_const_param(op, 'groups'))}")
    pad_type = str(_const_param(op, "pad_type"))
    if pad_type not in ("valid", "custom"):
        raise UnsupportedMILOp(op.op_type, op.name, f"pad_type={pad_type!r}")
    pad = _const_param(op, "pad")
    if pad_type == "valid" and pad is not None and np.any(np.asarray(pad) != 0):
        raise UnsupportedMILOp(op.op_type, op.name, "pad_type='valid' with a non-zero pad")
    if pad_type == "custom" and (pad is None or len(pad) != 4):
        raise UnsupportedMILOp(op.op_type, op.name, f"pad_type='custom' with pad={pad}")
    for name in ("strides", "dilations"):
        v = _const_param(op, name)
        if v is not None and (len(v) != 2 or np.any(np.asarray(v) < 1)):
            raise UnsupportedMILOp(op.op_type, op.name, f"{name}={list(v)}")


def _conv(a: dict) -> np.ndarray:
    x, w = _f32(a["x"]), _f32(a["weight"])
    sh, sw = (int(s) for s in a.get("strides", (1, 1)))
    dh, dw = (int(d) for d in a.get("dilations", (1, 1)))
    if str(a["pad_type"]) == "custom":
        top, bottom, left, right = (int(p) for p in a.get("pad", (0, 0, 0, 0)))
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    cout, _cin, kh, kw = w.shape
    # Windows of the dilated kernel's extent, then take every dilation-th tap and every stride-th
    # window: out[n, o, i, j] = sum_{c, p, q} x[n, c, i*sh + p*dh, j*sw + q*dw] * w[o, c, p, q].
    win = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (n, c, oh, ow, kh, kw)
    out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # (n, oh, ow, cout)
    out = out.transpose(0, 3, 1, 2)
    if a.get("bias") is not None:
        out = out + _f32(a["bias"]).reshape(1, cout, 1, 1)
    return out


def _linear(a: dict) -> np.ndarray:
    out = _f32(a["x"]) @ _f32(a["weight"]).T  # x * weight.T + bias
    if a.get("bias") is not None:
        out = out + _f32(a["bias"])
    return out


def _v_matmul(op) -> None:
    _require_float(op, "x", "y")
    for name in ("x", "y"):
        if bool(_const_param(op, f"transpose_{name}", False)) and op.inputs[name].rank < 2:
            raise UnsupportedMILOp(op.op_type, op.name, f"transpose_{name} on a rank-1 operand")


def _matmul(a: dict) -> np.ndarray:
    x, y = _f32(a["x"]), _f32(a["y"])
    # transpose_* swap the last two axes (rank >= 2 operands; see _v_matmul).
    if bool(a.get("transpose_x", False)):
        x = np.swapaxes(x, -1, -2)
    if bool(a.get("transpose_y", False)):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)  # numpy's rank-1 and batch-broadcast rules are MIL's


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def kernel(a: dict) -> np.ndarray:
        return fn(_f32(a["x"]), _f32(a["y"]))  # numpy broadcasting is MIL's

    return kernel


def _v_binary(op) -> None:
    _require_float(op, "x", "y")


def _relu(a: dict) -> np.ndarray:
    return np.maximum(_f32(a["x"]), np.float32(0))


def _softmax(a: dict) -> np.ndarray:
    x = _f32(a["x"])
    axis = int(a.get("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _layer_norm(a: dict) -> np.ndarray:
    x = _f32(a["x"])
    rank = x.ndim
    axes = a.get("axes")
    axes = tuple(range(rank)) if axes is None else tuple(sorted(int(i) % rank for i in axes))
    mean = x.mean(axis=axes, keepdims=True)
    centred = x - mean
    var = np.square(centred).mean(axis=axes, keepdims=True)  # biased variance
    out = centred / np.sqrt(var + np.float32(a.get("epsilon", 1e-5)))
    # gamma/beta have shape x.shape[axes]; lay them out along those axes.
    norm_shape = [x.shape[i] if i in axes else 1 for i in range(rank)]
    if a.get("gamma") is not None:
        out = out * _f32(a["gamma"]).reshape(norm_shape)
    if a.get("beta") is not None:
        out = out + _f32(a["beta"]).reshape(norm_shape)
    return out


def _reduce_mean(a: dict) -> np.ndarray:
    x = _f32(a["x"])
    axes = a.get("axes")
    axes = None if axes is None else tuple(int(i) for i in np.atleast_1d(axes))
    return np.mean(x, axis=axes, keepdims=bool(a.get("keep_dims", False)))


def _v_reshape(op) -> None:
    shape = [int(d) for d in _const_param(op, "shape")]
    # 0 means "copy a dimension" with opset-dependent rules (iOS15 vs iOS17): not implemented.
    if any(d == 0 or d < -1 for d in shape) or shape.count(-1) > 1:
        raise UnsupportedMILOp(op.op_type, op.name, f"shape={shape}")


def _reshape(a: dict) -> np.ndarray:
    return np.reshape(a["x"], [int(d) for d in a["shape"]])


def _transpose(a: dict) -> np.ndarray:
    x = a["x"]
    return np.transpose(x, [int(p) % x.ndim for p in a["perm"]])


def _slice_by_index(a: dict) -> np.ndarray:
    # x[begin[i]:end[i]:stride[i], ...] with numpy's rules for negative indices and clamping (as
    # coremltools' value inference); strides are positive (see _v_slice), so begin_mask[i] means
    # begin 0 and end_mask[i] means end x.shape[i], exactly as documented; squeeze_mask[i] takes the
    # single element at begin[i] (ignoring end[i]) and drops the axis.
    x = a["x"]
    rank = x.ndim
    begin = [int(b) for b in a["begin"]]
    end = [int(e) for e in a["end"]]
    stride = [int(s) for s in a.get("stride", [1] * rank)]
    begin_mask = [bool(m) for m in a.get("begin_mask", [False] * rank)]
    end_mask = [bool(m) for m in a.get("end_mask", [False] * rank)]
    squeeze_mask = [bool(m) for m in a.get("squeeze_mask", [False] * rank)]
    slices = []
    for i in range(rank):
        b = None if begin_mask[i] else begin[i]
        e = None if end_mask[i] else end[i]
        s = stride[i]
        if squeeze_mask[i]:
            e, s = None, np.iinfo(np.int32).max
        slices.append(slice(b, e, s))
    out = x[tuple(slices)]
    squeeze = tuple(i for i in range(rank) if squeeze_mask[i])
    return np.squeeze(out, axis=squeeze) if squeeze else out


def _v_slice(op) -> None:
    for name in ("begin", "end", "stride", "begin_mask", "end_mask", "squeeze_mask"):
        _const_param(op, name)
    stride = _const_param(op, "stride")
    # For a negative stride the op documentation ("begin_mask sets begin to 0") and coremltools'
    # value inference (numpy's None: start from the end) disagree, so negative strides are refused.
    if stride is not None and np.any(np.asarray(stride) < 1):
        raise UnsupportedMILOp(op.op_type, op.name, f"stride {[int(v) for v in stride]}")


def _v_none(op) -> None:
    pass


# op type -> (validator, kernel). const and constexpr_affine_dequantize are evaluated once at load.
_OPS: dict[str, tuple[Callable, Callable | None]] = {
    "const": (_v_none, None),
    "constexpr_affine_dequantize": (_v_quant_params, _dequant),
    "quantize": (_v_quantize, _quantize),
    "dequantize": (_v_quant_params, _dequant),
    "cast": (_v_cast, _cast),
    "conv": (_v_conv, _conv),
    "linear": (lambda op: _require_float(op, "x", "weight", "bias"), _linear),
    "matmul": (_v_matmul, _matmul),
    "add": (_v_binary, _binary(np.add)),
    "sub": (_v_binary, _binary(np.subtract)),
    "mul": (_v_binary, _binary(np.multiply)),
    "real_div": (_v_binary, _binary(np.divide)),
    "relu": (lambda op: _require_float(op, "x"), _relu),
    "softmax": (lambda op: _require_float(op, "x"), _softmax),
    "layer_norm": (lambda op: _require_float(op, "x"), _layer_norm),
    "reduce_mean": (lambda op: _require_float(op, "x"), _reduce_mean),
    "reshape": (_v_reshape, _reshape),
    "transpose": (_v_none, _transpose),
    "slice_by_index": (_v_slice, _slice_by_index),
}

#: Exactly the MIL op types the reference interpreter implements.
SUPPORTED_OPS: frozenset[str] = frozenset(_OPS)
