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

from dtconvert.mil_reference.kernels import _OPS, SUPPORTED_OPS, UnknownMILOp, UnsupportedMILOp, _np_dtype

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

    def every_op(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute the main function; returns every op's output by op name, in program order, and
        the program's outputs by name (``verify --explain`` looks inside with it)."""
        with _one_blas_thread():
            env = self._run(inputs, keep_all=True)
        return {**{entry[6]: env[entry[2]] for entry in self._plan}, **{name: env[name] for name in self.output_names}}

    def _run(self, inputs: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
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
        return env if keep_all else {name: env[name] for name in self.output_names}
