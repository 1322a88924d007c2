"""MIL reference: run a Core ML ML program's MIL with a small numpy interpreter (works on Linux).

What it is
    Core ML prediction (``MLModel.predict``) exists only on macOS. On Linux this module loads the
    ``.mlpackage`` that was actually saved (its ``model.mlmodel`` protobuf and ``weights/weight.bin``),
    and executes the ``main`` function op by op with numpy, following the op definitions of
    coremltools' MIL opsets (``coremltools.converters.mil.mil.ops.defs.iOS15/16/17``). It answers
    "does the MIL program that ships compute what the torch model computes?", which catches silent
    conversion errors: a wrong constant, a mangled weight, a dropped op, a wrong axis.

    Results are reported as "MIL reference", never as "Core ML": they come from this interpreter,
    not from Apple's runtime.

What it is not
    - Not Core ML. Apple's CPU/GPU/Neural Engine kernels choose their own accumulation order and
      internal precision; fp16 programs can differ from this reference in the last bits.
    - Not a general MIL interpreter. Only the ops in :data:`SUPPORTED_OPS`, and of those only the
      forms written below, are implemented; anything else raises :class:`UnknownMILOp` when the
      program is loaded, before anything runs, rather than being guessed.

Precision model
    Every op's result is stored in the dtype the program declares for its output var, so fp16
    programs keep every intermediate tensor in numpy ``float16`` and fp32 programs in ``float32``;
    ``cast`` ops switch between the two exactly where the program does. Within one op, fp16 inputs
    are widened to float32 and the result is rounded to fp16 once (for add/mul/sub/div this is
    exactly IEEE fp16 arithmetic; for matmul/linear/conv/softmax/layer_norm it models fp16 storage
    with float32 accumulation, which is what numpy's own float16 matmul does too).

Quantization
    ``quantize`` follows the definition ``clip(round(input / scale) + zero_point)``: the division is
    done in the input's dtype (as coremltools' own value inference does), rounding is to nearest
    with ties to even (``np.rint``; the same rule as torch's ``quantize_per_tensor``), then
    clipping to the int8/uint8 range. ``dequantize`` and ``constexpr_affine_dequantize`` compute
    ``scale * (q - zero_point)`` in float32 and round once to the scale's dtype.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SUPPORTED_OPS",
    "MILReference",
    "UnknownMILOp",
    "UnsupportedMILOp",
    "check_ops",
    "io_signature",
    "load_program",
    "program_ops",
]


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


# ---- loading -------------------------------------------------------------------------------------


@contextmanager
def _package_copy(path: str | Path) -> Iterator[Path]:
    """A throw-away copy of the package: coremltools' package reader may rewrite Manifest.json
    (and the caller checks the sha256 of every file it ships), so the original is only read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    with tempfile.TemporaryDirectory(prefix="mil_reference_") as tmp:
        copy = Path(tmp) / path.name
        if path.is_dir():
            shutil.copytree(path, copy)
        else:
            shutil.copy2(path, copy)
        yield copy


def _load(path: str | Path, with_program: bool) -> tuple[Any, Any]:
    """(spec, pymil Program or None), both read from a temporary copy of the package."""
    import coremltools as ct

    with _package_copy(path) as copy:
        model = ct.models.MLModel(str(copy), skip_model_load=True)
        spec = model.get_spec()
        if spec.WhichOneof("Type") != "mlProgram":
            raise ValueError(f"{path} is not a Core ML ML program (it is {spec.WhichOneof('Type')!r})")
        program = None
        if with_program:
            # Only after the op check: the milproto loader fails on op types it does not know, and
            # an unknown op must be reported as such. The loader reads weight.bin eagerly, so the
            # temporary copy can go away afterwards.
            _raise_unknown(_spec_ops(spec))
            from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

            program = milproto_load(spec, spec.specificationVersion, model.weights_dir)
    return spec, program


def _op_name(op) -> str:
    attr = op.attributes.get("name")
    if attr is not None and attr.immediateValue.tensor.strings.values:
        return attr.immediateValue.tensor.strings.values[0]
    return op.outputs[0].name if op.outputs else ""


def _spec_ops(spec) -> list[tuple[str, str]]:
    """(op type, op name) of every op in the main function, nested blocks included, read from the
    protobuf itself (so an op type coremltools' Python side does not know is still seen)."""
    functions = spec.mlProgram.functions
    if "main" not in functions:
        raise ValueError(f"ML program has no 'main' function (functions: {sorted(functions)})")
    main = functions["main"]
    ops: list[tuple[str, str]] = []

    def walk(block) -> None:
        for op in block.operations:
            ops.append((op.type, _op_name(op)))
            for inner in op.blocks:
                walk(inner)

    walk(main.block_specializations[main.opset])
    return ops


def _raise_unknown(ops: list[tuple[str, str]]) -> None:
    for op_type, name in ops:
        if op_type not in SUPPORTED_OPS:
            raise UnknownMILOp(op_type, name)


def load_program(path: str | Path):
    """The package's pymil Program (read from a temporary copy; raises UnknownMILOp first)."""
    return _load(path, with_program=True)[1]


def program_ops(path: str | Path) -> dict[str, int]:
    """Op type -> count for the main function of the ML program at ``path``."""
    spec, _ = _load(path, with_program=False)
    return dict(sorted(Counter(t for t, _ in _spec_ops(spec)).items()))


def check_ops(path: str | Path) -> list[str]:
    """Op types of the main function that are not in :data:`SUPPORTED_OPS` (empty: all known)."""
    return sorted(t for t in program_ops(path) if t not in SUPPORTED_OPS)


def io_signature(path: str | Path) -> dict:
    """``{"inputs": [{"name", "shape", "dtype"}], "outputs": [...]}`` from the model description."""
    from coremltools.proto import FeatureTypes_pb2

    spec, _ = _load(path, with_program=False)
    names = {v: k for k, v in FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.items()}
    numpy_names = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32", "INT8": "int8"}

    def describe(features) -> list[dict]:
        out = []
        for f in features:
            kind = f.type.WhichOneof("Type")
            if kind == "multiArrayType":
                code = names[f.type.multiArrayType.dataType]
                out.append(
                    {"name": f.name, "shape": [int(d) for d in f.type.multiArrayType.shape], "dtype": numpy_names.get(code, code.lower())}
                )
            else:  # images, dictionaries...: named by feature kind, no array shape
                out.append({"name": f.name, "shape": None, "dtype": kind})
        return out

    return {"inputs": describe(spec.description.input), "outputs": describe(spec.description.output)}


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


# ---- interpreter ---------------------------------------------------------------------------------


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """The matrices here are tiny (64 x 64): a multi-threaded BLAS spends its time waking and
    spinning threads, and next to torch's own threads on 2 cores that made a run ~20x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # only speed depends on it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class MILReference:
    """The main function of a saved ML program, executed with numpy.

    Construction loads the package (from a temporary copy; the package is never written), refuses
    any op outside :data:`SUPPORTED_OPS` or in an unimplemented form (:class:`UnknownMILOp`), and
    evaluates the constants once. :meth:`run` then executes the program for one set of inputs.
    """

    def __init__(self, path: str | Path) -> None:
        self.path: Path | None = Path(path)
        self._init(load_program(self.path))

    @classmethod
    def from_program(cls, program) -> MILReference:
        """From an in-memory pymil Program (e.g. one built with ``mb.program`` in a test)."""
        self = cls.__new__(cls)
        self.path = None
        self._init(program)
        return self

    def _init(self, program) -> None:
        if "main" not in program.functions:
            raise ValueError(f"ML program has no 'main' function (functions: {sorted(program.functions)})")
        fn = program.functions["main"]
        for op in fn.operations:  # the spec was checked already; pymil programs are checked here
            if op.op_type not in SUPPORTED_OPS:
                raise UnknownMILOp(op.op_type, op.name)
            if op.blocks:
                raise UnsupportedMILOp(op.op_type, op.name, "an op with nested blocks")
            if len(op.outputs) != 1:
                raise UnsupportedMILOp(op.op_type, op.name, f"{len(op.outputs)} outputs")
            _OPS[op.op_type][0](op)

        self.inputs = {name: (tuple(var.shape), _np_dtype(var)) for name, var in fn.inputs.items()}
        self.output_names = [var.name for var in fn.outputs]
        self._consts: dict[str, np.ndarray] = {}
        # (kernel, (param, var) args, output, shape, dtype, op type, op name); the kernel is None only for
        # const, which is evaluated here and never planned.
        self._plan: list[tuple[Callable | None, list[tuple[str, str]], str, tuple, type, str, str]] = []
        for op in fn.operations:
            out = op.outputs[0]
            args: list[tuple[str, str]] = []
            for param, var in op.inputs.items():
                if isinstance(var, (list, tuple)):  # variadic inputs (concat, ...): none implemented
                    raise UnsupportedMILOp(op.op_type, op.name, f"variadic input {param!r}")
                args.append((param, var.name))
            entry = (_OPS[op.op_type][1], args, out.name, tuple(out.shape), _np_dtype(out), op.op_type, op.name)
            if op.op_type == "const":
                value = np.asarray(out.val)
                # Strings (output_dtype, pad_type, ...) are kept as they are; tensors get the check.
                self._consts[out.name] = value if value.dtype.kind in "US" else self._store(value, entry)
            elif op.op_type.startswith("constexpr_"):
                # Materialized once, from the stored quantized data (not coremltools' own value).
                self._consts[out.name] = self._execute(entry, self._consts)
            else:
                self._plan.append(entry)

    @staticmethod
    def _store(value: np.ndarray, entry) -> np.ndarray:
        _, _, _name, shape, dtype, op_type, op_name = entry
        value = np.asarray(value)
        if value.shape != shape and all(isinstance(d, int) for d in shape):
            raise RuntimeError(f"MIL reference: {op_type} {op_name!r} produced shape {value.shape}, the program declares {shape}")
        if np.issubdtype(dtype, np.integer) and np.issubdtype(value.dtype, np.floating):
            # Only quantize produces integers from floats; it has clipped to the range already.
            return value.astype(dtype)
        return value.astype(dtype, copy=False)

    def _execute(self, entry, env: dict[str, np.ndarray]) -> np.ndarray:
        kernel, args, *_ = entry
        values = {}
        for param, var_name in args:
            if var_name not in env:
                raise RuntimeError(f"MIL reference: {entry[5]} {entry[6]!r} reads {var_name!r} before it is computed")
            values[param] = env[var_name]
        return self._store(kernel(values), entry)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute the main function; returns every output of the program by name."""
        with _one_blas_thread():
            return self._run(inputs)

    def run_batch(self, name: str, batch: np.ndarray, output: str | None = None) -> np.ndarray:
        """Run a fixed-batch-1 program over ``batch`` one item at a time; concatenates ``output``."""
        output = output or self.output_names[0]
        with _one_blas_thread():
            return np.concatenate([self._run({name: batch[i : i + 1]})[output] for i in range(len(batch))])

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(inputs) != set(self.inputs):
            raise ValueError(f"MIL reference expects inputs {sorted(self.inputs)}, got {sorted(inputs)}")
        env = dict(self._consts)
        for name, (shape, dtype) in self.inputs.items():
            value = np.asarray(inputs[name])
            if value.shape != shape:
                raise ValueError(f"input {name!r} has shape {value.shape}, the program expects {shape}")
            env[name] = value.astype(dtype)
        with np.errstate(over="ignore"):  # fp16 overflow to inf is the fp16 program's behaviour
            for entry in self._plan:
                env[entry[2]] = self._execute(entry, env)
        return {name: env[name] for name in self.output_names}
