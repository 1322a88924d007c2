"""The TFLite target: the encoder as ``.tflite`` (torch → ONNX → onnx2tf → TFLiteConverter), run in LiteRT.

onnx2tf translates the graph; TensorFlow's own converter quantizes, since onnx2tf's
quantization changed the float graph it produced (TOOLCHAIN.md, pitfall 3). Only builtin ops
are allowed: a Flex (Select TF) op is an export error. Two numeric gates catch silent
mistranslation: onnxruntime on the ONNX file and TensorFlow on onnx2tf's SavedModel must both
match torch in float32.

Precision ``int8`` is dynamic-range quantization (int8 weights; the XNNPACK delegate quantizes
the inputs of fully connected and conv layers at run time): LiteRT's XNNPACK delegate takes the
whole graph as one partition. ``int8-static`` is full-integer quantization with the calibration
images as representative data: XNNPACK takes no int8 RSQRT, SOFTMAX, SQUARED_DIFFERENCE, DIV,
standalone RELU, nor BATCH_MATMUL with a non-zero right-hand zero point, so on a CPU it runs in
many partitions (recorded in the manifest); it is meant for accelerators that need it.

onnx2tf must never reach the network: it runs in a scratch directory holding its sample-data
file, with the input kept NCHW (the sample download is tied to NHWC 3-channel inputs), and with
every socket connection refused for the duration.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np

from dtconvert.targets import FP32, INPUT_NAME, INT8_LARGE_WEIGHTS, INT8_WEIGHTS, OUTPUT_NAME, ExportError, ExportJob, Run, Scheme

SCHEMES = {
    "int8": Scheme(
        "dynamic",
        INT8_LARGE_WEIGHTS,
        "int8 per tensor, quantized at run time by the delegate, at the inputs of fully connected and conv layers; everything else float32",
        "LiteRT's XNNPACK delegate runs it as one partition; full-integer int8 falls apart into dozens of partitions "
        "around the ops XNNPACK takes only in float (RSQRT, SOFTMAX, ...)",
    ),
    "int8-static": Scheme(
        "static",
        INT8_WEIGHTS,
        "int8 per tensor with scales fixed by calibration, every op (full integer)",
        "for accelerators that need a full-integer model; on a CPU, XNNPACK splits it (see delegation)",
    ),
    "fp32": FP32,
}

FLOAT_GATE = 1e-4  # max abs error allowed between torch and each float intermediate
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


@contextlib.contextmanager
def no_network():
    """Refuse every outgoing connection made in this process while converting."""

    def refuse(*args, **kwargs):
        raise OSError("dtconvert: network access is disabled during conversion")

    # patch.object puts each back on exit, as it was (socket.socket inherits connect from _socket).
    with contextlib.ExitStack() as patches:
        for owner, name in (
            (socket.socket, "connect"),
            (socket.socket, "connect_ex"),
            (socket, "create_connection"),
            (socket, "getaddrinfo"),
        ):
            patches.enter_context(mock.patch.object(owner, name, refuse))
        yield


@contextlib.contextmanager
def working_directory(path: Path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def tflite_ops(path: Path) -> dict[str, int]:
    """Op names and counts of a .tflite, read from its flatbuffer (Flex ops appear as 'Flex…')."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops: Counter = Counter()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            ops[code.customCode.decode() if code.customCode else names[builtin]] += 1
    return dict(sorted(ops.items()))


def op_precisions(path: Path) -> dict[str, dict[str, int]]:
    """``{"int8": {op: n}, "float": {op: n}}``: an op counts as int8 when one of its inputs (the
    activation, or the weights of a dynamic-range op) is int8. QUANTIZE and DEQUANTIZE convert
    between the two and are not counted."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    kinds: dict[str, Counter] = {"int8": Counter(), "float": Counter()}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = code.customCode.decode() if code.customCode else names[max(code.builtinCode, code.deprecatedBuiltinCode)]
            if name in ("QUANTIZE", "DEQUANTIZE"):
                continue
            int8 = any(i >= 0 and subgraph.tensors[i].type == schema.TensorType.INT8 for i in op.inputs)
            kinds["int8" if int8 else "float"][name] += 1
    return {k: dict(sorted(v.items())) for k, v in kinds.items()}


def delegation(path: Path, threads: int = 1) -> dict:
    """How LiteRT's default XNNPACK delegate partitions the model: one ``DELEGATE`` node per
    partition, and the model's ops that no partition covers (they run on LiteRT's own kernels).

    A partition covers the ops between its input and output tensors; an op is outside when it
    lies on no delegate's path, found by walking back from each delegate's outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()  # the delegate is applied here
    nodes = interpreter._get_ops_details()
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    originals = [n for n in nodes if n["op_name"] != "DELEGATE"]
    producer = {int(t): n["index"] for n in originals for t in n["outputs"] if t >= 0}
    by_index = {n["index"]: n for n in originals}
    covered: set[int] = set()
    for delegate in delegates:
        boundary = {int(t) for t in delegate["inputs"]}
        pending = [int(t) for t in delegate["outputs"]]
        while pending:
            tensor = pending.pop()
            node = producer.get(tensor)
            if tensor in boundary or node is None or node in covered:
                continue
            covered.add(node)
            pending.extend(int(t) for t in by_index[node]["inputs"] if t >= 0)
    outside = Counter(n["op_name"] for n in originals if n["index"] not in covered)
    return {"delegate": "XNNPACK", "partitions": len(delegates), "ops_outside_delegate": dict(sorted(outside.items()))}


def non_builtin_ops(ops: dict[str, int]) -> list[str]:
    return [name for name in ops if name.startswith("Flex") or not name.isupper()]


def io_details(path: Path) -> dict:
    """Names, shapes, dtypes and quantization of a .tflite's inputs and outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()

    def describe(details: dict) -> list[dict]:
        return [
            {
                "name": name,
                "shape": [int(s) for s in d["shape"]],
                "dtype": np.dtype(d["dtype"]).name,
                "quantization": {"scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])},
            }
            for name, d in details.items()
        ]

    return {"inputs": describe(runner.get_input_details()), "outputs": describe(runner.get_output_details())}


def make_runner(path: Path, reference_kernels: bool = False, threads: int | None = None, batch: int = 1) -> Run:
    """Run a .tflite through LiteRT: XNNPACK by default, or the reference kernels; its input
    resized to ``batch`` images when that is not 1 (check that it is exact before trusting it)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"experimental_op_resolver_type": OpResolverType.BUILTIN_REF} if reference_kernels else {}
    interpreter = Interpreter(model_path=str(path), num_threads=threads, **kwargs)
    signature = interpreter.get_signature_runner()  # tensors by the names the export gave them
    given, wanted = signature.get_input_details()[INPUT_NAME], signature.get_output_details()[OUTPUT_NAME]
    index_in, index_out, shape = given["index"], wanted["index"], list(given["shape"])
    del signature, given, wanted  # it holds views of the interpreter's tensors; allocate_tensors refuses while they live
    if batch != 1:
        interpreter.resize_tensor_input(index_in, [batch, *shape[1:]], strict=False)
    interpreter.allocate_tensors()

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(index_in, np.ascontiguousarray(x, dtype=np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(index_out)

    return run


class TFLiteTarget:
    name = "tflite"
    extension = "tflite"
    schemes = SCHEMES

    def export(self, job: ExportJob, path: Path) -> dict:
        import torch

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        work = job.workdir / "tflite"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        x = job.example.numpy()
        with torch.no_grad():
            reference = job.encoder(job.example).numpy()

        onnx_path = self._onnx(job, work / "encoder.onnx", x, reference)
        saved_model = self._onnx2tf(job, onnx_path, work, x, reference)
        data = self._convert(job, saved_model)
        path.write_bytes(data)
        ops = tflite_ops(path)
        flex = non_builtin_ops(ops)
        if flex:
            raise ExportError(f"the TFLite model needs non-builtin ops {flex}; only builtin ops may ship")
        return {
            "ops": ops,
            **io_details(path),
            "quantization": {**SCHEMES[job.precision].describe(), "ops": op_precisions(path)},
            "delegation": delegation(path),
        }

    def _onnx(self, job: ExportJob, onnx_path: Path, x: np.ndarray, reference: np.ndarray) -> Path:
        import onnxruntime as ort
        import torch

        # Fixed batch 1: a dynamic batch went through onnx2tf with no error and wrong numbers.
        torch.onnx.export(
            job.encoder,
            (job.example,),
            str(onnx_path),
            dynamo=True,
            opset_version=18,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            external_data=False,
            verbose=False,
        )
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {INPUT_NAME: x})
        error = float(np.abs(out - reference).max())
        if error > FLOAT_GATE:
            raise ExportError(f"the ONNX export differs from torch by {error:.3g} (bound {FLOAT_GATE})")
        return onnx_path

    def _onnx2tf(self, job: ExportJob, onnx_path: Path, work: Path, x: np.ndarray, reference: np.ndarray) -> Path:
        import onnx2tf
        import tensorflow as tf

        raw = work / "onnx2tf"
        # onnx2tf reads this file from the working directory instead of downloading it.
        sample = _sample_images(job.calibration)
        np.save(work / SAMPLE_FILE, sample)
        with working_directory(work), no_network():
            onnx2tf.convert(
                input_onnx_file_path=str(onnx_path),
                output_folder_path=str(raw),
                output_signaturedefs=True,
                copy_onnx_input_output_names_to_tflite=True,
                not_use_onnxsim=True,
                keep_ncw_or_nchw_or_ncdhw_input_names=[INPUT_NAME],
                non_verbose=True,
            )
        # onnx2tf names the output 'output_0'; re-sign so the model's contract is image → wire.
        loaded = tf.saved_model.load(str(raw))
        serving = loaded.signatures["serving_default"]
        ((source_input, _),) = serving.structured_input_signature[1].items()
        ((source_output, _),) = serving.structured_outputs.items()

        class Encoder(tf.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = loaded  # keeps the variables tracked

            @tf.function(input_signature=[tf.TensorSpec(list(x.shape), tf.float32, name=INPUT_NAME)])
            def serve(self, image):
                return {OUTPUT_NAME: serving(**{source_input: image})[source_output]}

        module = Encoder()
        signed = work / "saved_model"
        tf.saved_model.save(module, str(signed), signatures={"serving_default": module.serve})
        out = tf.saved_model.load(str(signed)).signatures["serving_default"](**{INPUT_NAME: tf.constant(x)})[OUTPUT_NAME].numpy()
        if out.shape != reference.shape:
            raise ExportError(f"onnx2tf changed the wire tensor's shape from {reference.shape} to {out.shape}")
        error = float(np.abs(out - reference).max())
        if error > FLOAT_GATE:
            raise ExportError(f"onnx2tf's float32 graph differs from torch by {error:.3g} (bound {FLOAT_GATE}): a silent mistranslation")
        return signed

    def _convert(self, job: ExportJob, saved_model: Path) -> bytes:
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        if job.precision == "int8":
            # Dynamic range: int8 weights, no representative data; XNNPACK quantizes activations at run time.
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif job.precision == "int8-static":
            calibration = job.calibration

            def representative():
                for i in range(len(calibration)):
                    yield [calibration[i : i + 1]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            # Float input and output: the app feeds the preprocessed image and quantizes the wire
            # tensor with the manifest's scale and zero point, as for every other target.
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if job.keep_float and job.precision == "int8-static":
            raise ExportError("--keep-float with int8-static is not supported on tflite: a full-integer model has no float ops")
        with no_network():
            try:
                data = converter.convert()
            except Exception as e:  # the converter raises ConverterError and friends
                raise ExportError(f"TFLiteConverter failed: {str(e).strip().splitlines()[0]}") from e
        if job.keep_float and job.precision == "int8":
            from dtconvert.targets.tflite_graph import float_weights, kept_weights

            data = float_weights(data, kept_weights(job.encoder, job.keep_float))
        return data

    def runtimes(self) -> list[str]:
        return ["litert", "litert-reference"]

    def look_inside(self, path: Path, runtime: str, encoder, images: np.ndarray, points: list[str], precision: str, keep_float=()):
        if runtime != "litert-reference":
            return "the wire only: XNNPACK's partition keeps its tensors to itself (the reference kernels show them)"
        from dtconvert.targets.tflite_graph import point_values

        values = point_values(path, len(encoder.layers), images)
        return values if values is not None else "the wire only: the graph's LayerNorms and residual adds were not found"

    def structure(self, path: Path, entry: dict) -> tuple[list[str], str]:
        """Problems with the .tflite's ops and I/O against its manifest entry, and what a pass says."""
        flex = non_builtin_ops(tflite_ops(path))
        io = io_details(path)
        mismatch = [k for k in ("inputs", "outputs") if io[k] != entry.get(k)]
        problems = [f"non-builtin ops {flex}"] if flex else []
        problems += [f"{k} {io[k]} differ from the manifest's {entry.get(k)}" for k in mismatch]
        return problems, "builtin ops only; I/O and quantization as in the manifest"

    def delegation(self, path: Path) -> dict:
        measured = delegation(path)
        return {"partitions": measured["partitions"], "ops_outside_delegate": measured["ops_outside_delegate"]}

    def runner(self, path: Path, runtime: str | None = None, *, threads: int | None = None, batch: int = 1) -> Run:
        if runtime not in (None, "litert", "litert-reference"):
            raise ValueError(f"a .tflite runs in LiteRT, not {runtime!r}")
        return make_runner(path, reference_kernels=runtime == "litert-reference", threads=threads, batch=batch)


def _sample_images(calibration: np.ndarray) -> np.ndarray:
    import torch

    """20 calibration images as 128×128×3 NHWC in [0, 1], the shape onnx2tf's sample file has."""
    images = torch.from_numpy(calibration[:20])
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
    images = torch.nn.functional.interpolate(images, size=(128, 128), mode="bilinear", align_corners=False)
    images = (images - images.amin()) / (images.amax() - images.amin() + 1e-12)
    out = images.permute(0, 2, 3, 1).numpy().astype(np.float32)
    if len(out) < 20:
        out = np.concatenate([out] * (20 // len(out) + 1))[:20]
    return out
