"""Reading and editing a .tflite's graph beyond what the converter offers.

* ``--keep-float`` for dynamic-range int8 (:func:`float_weights`): TensorFlow's converter has no
  per-layer switch, so the kept layers' int8 weights are swapped for their float32 ones.
* ``verify --explain`` (:func:`point_values`): the tensors at the device encoder's points, found
  by the graph's structure, since onnx2tf's tensor names name no module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dtconvert.targets import INPUT_NAME, OUTPUT_NAME, ExportError


def kept_weights(encoder, patterns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The float32 weights of the linear and conv layers that ``--keep-float`` keeps (those below
    the weight threshold are float already), in TFLite's layout: (out, in) and (out, H, W, in)."""
    import torch

    from dtconvert.rewrite import kept_float
    from dtconvert.targets import WEIGHT_THRESHOLD

    kept = {}
    for name, module in encoder.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and kept_float(name, patterns):
            if module.weight.numel() >= WEIGHT_THRESHOLD:
                weight = module.weight.detach().numpy().astype(np.float32)
                kept[name] = weight.transpose(0, 2, 3, 1) if weight.ndim == 4 else weight
    return kept


def float_weights(data: bytes, kept: dict[str, np.ndarray]) -> bytes:
    """The dynamic-range model with the kept layers' weights in float32: their FULLY_CONNECTED and
    CONV_2D ops then take float inputs, and XNNPACK runs them in float.

    TFLite's converter has no per-layer switch for dynamic-range quantization, so each kept
    layer's op is found by its int8 weights (they dequantize to the module's weights within half
    a step, per output channel) and given the module's float32 weights instead."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    weight_ops = {schema.BuiltinOperator.FULLY_CONNECTED, schema.BuiltinOperator.CONV_2D}
    found: set[str] = set()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) not in weight_ops:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            if tensor.type != schema.TensorType.INT8 or tensor.quantization is None:
                continue
            name = _weights_of(tensor, model.buffers[tensor.buffer], kept)
            if name is not None:
                tensor.type = schema.TensorType.FLOAT32
                tensor.quantization = None
                model.buffers[tensor.buffer].data = np.frombuffer(kept[name].tobytes(), dtype=np.uint8)
                found.add(name)
    missing = sorted(set(kept) - found)
    if missing:
        raise ExportError(f"--keep-float: no int8 op of the .tflite holds the weights of {', '.join(missing)}")
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _weights_of(tensor, buffer, kept: dict[str, np.ndarray]) -> str | None:
    """The kept module whose weights this int8 tensor holds, if any."""
    shape = tuple(int(d) for d in tensor.shape)
    q = np.frombuffer(bytes(buffer.data), dtype=np.int8).reshape(shape).astype(np.float64)
    scales = np.asarray(tensor.quantization.scale, dtype=np.float64).reshape(-1, *([1] * (len(shape) - 1)))
    for name, weight in kept.items():
        if weight.shape == shape and np.all(np.abs(q * scales - weight) <= scales * 0.5 + 1e-7):
            return name
    return None


def _producers(nodes: list[dict]) -> dict[int, dict]:
    return {int(t): n for n in nodes for t in n["outputs"] if t >= 0}


def _through_layout(tensor: int, producer: dict[int, dict]) -> dict | None:
    """The op that computed ``tensor``, looking through the TRANSPOSE and RESHAPE that onnx2tf inserts."""
    node = producer.get(tensor)
    while node is not None and node["op_name"] in ("TRANSPOSE", "RESHAPE", "QUANTIZE", "DEQUANTIZE"):
        node = producer.get(int(node["inputs"][0]))
    return node


def point_tensors(interpreter, layers: int) -> dict[str, int] | None:
    """Tensor index of each point of the device encoder in a .tflite from onnx2tf, found by structure.

    onnx2tf writes each LayerNorm as Keras' ``layer_normalization_N`` ops (MEAN … ADD
    ``batchnorm/add_1``), two per Transformer layer in order. A LayerNorm's input is the residual
    ADD; of its two inputs the one computed by a FULLY_CONNECTED is the branch (attention's
    projection, or the MLP's second layer), the other the layer's input (after pooling, if it
    pools). None when the graph does not have that shape."""
    nodes = interpreter._get_ops_details()
    producer = _producers(nodes)
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    norms: dict[str, list[dict]] = {}
    for n in nodes:
        for t in n["outputs"]:
            key = next((part for part in names.get(int(t), "").split("/") if part.startswith("layer_normalization")), None)
            if key is not None:
                norms.setdefault(key, []).append(n)
    if len(norms) != 2 * layers:
        return None
    found: dict[str, int] = {}
    convs = [n for n in nodes if n["op_name"] == "CONV_2D"]
    if convs:
        found["patch_embed"] = int(convs[0]["outputs"][0])
    ordered = sorted(norms.values(), key=lambda group: group[0]["index"])
    for i in range(layers):
        for j, branch_name in enumerate(("attn", "ffn")):
            group = ordered[2 * i + j]
            residual = producer.get(int(group[0]["inputs"][0]))
            if residual is None or residual["op_name"] != "ADD":
                return None
            a, b = (int(t) for t in residual["inputs"][:2])
            branch, other = (a, b) if (_through_layout(a, producer) or {}).get("op_name") == "FULLY_CONNECTED" else (b, a)
            found[f"layers.{i}.{branch_name}"] = branch
            if j == 0:
                found[f"layers.{i}.pool"] = other
            else:
                found[f"layers.{i}"] = int(group[-1]["outputs"][0])
    return found


def point_values(path: Path, layers: int, images: np.ndarray) -> dict[str, np.ndarray] | None:
    """Every point of the device encoder (see :func:`point_tensors`) on ``images``, from LiteRT's
    reference kernels with every tensor kept (a delegate's tensors are not), int8 ones
    dequantized with their own parameters; conv outputs NCHW as torch has them. None when the
    graph's points cannot be found."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path), experimental_preserve_all_tensors=True, experimental_op_resolver_type=OpResolverType.BUILTIN_REF
    )
    interpreter.allocate_tensors()
    tensors = point_tensors(interpreter, layers)
    if tensors is None:
        return None
    signature = interpreter.get_signature_runner()
    index_in, index_out = signature.get_input_details()[INPUT_NAME]["index"], signature.get_output_details()[OUTPUT_NAME]["index"]
    del signature
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    captured: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
    wires = []
    for i in range(len(images)):
        interpreter.set_tensor(index_in, np.ascontiguousarray(images[i : i + 1], dtype=np.float32))
        interpreter.invoke()
        for name, index in tensors.items():
            value = interpreter.get_tensor(index)
            scale, zero_point = details[index]["quantization"]
            if value.dtype.kind == "i" and scale:
                value = (value.astype(np.float32) - zero_point) * scale
            captured[name].append(value.transpose(0, 3, 1, 2) if value.ndim == 4 else value)
        wires.append(interpreter.get_tensor(index_out))
    return {**{name: np.concatenate(v) for name, v in captured.items()}, "wire": np.concatenate(wires)}
