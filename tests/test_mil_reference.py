"""The MIL reference interpreter: the saved Core ML programs, executed with numpy on Linux.

Results here are "MIL reference" results (dtconvert.mil_reference), not Core ML predictions."""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from coremltools.converters.mil.mil.types import nptype_from_builtin

from dtconvert import mil_reference
from dtconvert.mil_reference import (
    SUPPORTED_OPS,
    MILReference,
    UnknownMILOp,
    UnsupportedMILOp,
    check_ops,
    io_signature,
    load_program,
    program_ops,
)
from tests.conftest import artifact

pytestmark = pytest.mark.coreml

SIGNATURE = {
    "inputs": [{"name": "image", "shape": [1, 1, 16, 16], "dtype": "float32"}],
    "outputs": [{"name": "wire", "shape": [1, 8, 8], "dtype": "float32"}],
}
MODEL_FILE = Path("Data/com.apple.CoreML/model.mlmodel")
WEIGHTS_FILE = Path("Data/com.apple.CoreML/weights/weight.bin")

# Bounds, with margin over what was measured: fp32 max |diff| 1.4e-6 on the one-epoch model; the
# default int8 (weight-only, fp16) on the shipped digits recipe: SQNR 53.4 dB (360 held-out
# images); int8-static (W8A8 in fp16) on the one-epoch model: 29.2 dB against the pt2e program it
# came from (64 images), where a wrong constant or axis gives well under 10 dB.
FP32_MAX_ABS = 1e-4
INT8_MIN_COSINE = 0.995
INT8_MIN_SQNR_DB = 38.0
STATIC_MIN_SQNR_DB = 24.0


@pytest.fixture(scope="module")
def fp32_package(fp32_export) -> Path:
    return artifact(fp32_export, "coreml")[0]


@pytest.fixture(scope="module")
def int8_package(int8_export) -> Path:
    return artifact(int8_export, "coreml")[0]


@pytest.fixture(scope="module")
def static_package(static_export) -> Path:
    """W8A8 (``--precision int8-static``): the program with quantize and dequantize ops."""
    return artifact(static_export, "coreml")[0]


def file_hashes(package: Path) -> dict[str, str]:
    return {str(f.relative_to(package)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(package.rglob("*")) if f.is_file()}


def cosine_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return float(10 * np.log10((reference ** 2).sum() / ((actual - reference) ** 2).sum()))


# ---- the exported packages -------------------------------------------------------------------


@pytest.mark.parametrize("which", ["fp32_package", "int8_package", "static_package"])
def test_io_signature(which, request):
    assert io_signature(request.getfixturevalue(which)) == SIGNATURE


def test_op_lists(fp32_package, int8_package, static_package):
    for package in (fp32_package, int8_package, static_package):
        assert check_ops(package) == []
        assert set(program_ops(package)) <= SUPPORTED_OPS
    # int8 is weight-only in fp16, int8-static is W8A8 in fp16; fp32 has no quantization at all.
    assert {"constexpr_affine_dequantize", "cast"} <= set(program_ops(int8_package))
    assert not {"quantize", "dequantize"} & set(program_ops(int8_package))
    assert {"quantize", "dequantize", "constexpr_affine_dequantize", "cast"} <= set(program_ops(static_package))
    assert not {"quantize", "dequantize", "constexpr_affine_dequantize", "cast"} & set(program_ops(fp32_package))


def test_fp32_matches_torch(fp32_package, fp32_reference):
    images, wire = fp32_reference.images[:32], fp32_reference.wire[:32]
    out = MILReference(fp32_package).run_batch("image", images)
    assert out.dtype == np.float32 and out.shape == wire.shape
    err = float(np.abs(out - wire).max())
    print(f"MIL reference fp32 on {len(images)} images: max |diff| {err:.3g} vs torch")
    assert err <= FP32_MAX_ABS, f"MIL reference fp32 max |diff| {err:.3g} vs torch"


def test_int8_matches_torch(int8_package, int8_reference):
    images, wire = int8_reference.images, int8_reference.wire
    ref = MILReference(int8_package)
    start = time.perf_counter()
    out = ref.run_batch("image", images)
    seconds = time.perf_counter() - start
    cos, sqnr = cosine_per_image(out, wire), sqnr_db(wire, out)
    report = (f"MIL reference int8 on {len(images)} images: cosine min {cos.min():.4f} mean {cos.mean():.4f}, "
              f"SQNR {sqnr:.1f} dB, {1000 * seconds / len(images):.1f} ms/image")
    print(report)
    assert out.shape == wire.shape
    assert cos.min() >= INT8_MIN_COSINE and sqnr >= INT8_MIN_SQNR_DB, report
    assert seconds < 60, report


def test_int8_static_computes_the_pt2e_program(static_package, quick_ckpt, fp32_reference):
    """W8A8 is far from fp32 on the one-epoch model (23.7 dB), so the interpreter is checked
    against what the program should compute: the pt2e program it was converted from, rebuilt
    from the same 32 calibration images (the same scales), run by torch in float32."""
    import torch

    from dtconvert.checkpoint import build_model, load_checkpoint
    from dtconvert.data import checkpoint_images
    from dtconvert.quantize import pt2e_quantize

    ckpt = load_checkpoint(quick_ckpt)
    calibration, _ = checkpoint_images(ckpt, "train", 32)
    program = pt2e_quantize(build_model(ckpt).encoder.eval(), torch.from_numpy(calibration[:1].copy()), calibration, dynamic=False)
    images = fp32_reference.images[:64]
    with torch.no_grad():
        want = np.concatenate([program(torch.from_numpy(images[i : i + 1].copy())).numpy() for i in range(len(images))])
    out = MILReference(static_package).run_batch("image", images)
    report = (f"MIL reference int8-static on {len(images)} images: SQNR {sqnr_db(want, out):.1f} dB against the pt2e program, "
              f"{sqnr_db(fp32_reference.wire[:64], out):.1f} dB against fp32")
    print(report)
    assert sqnr_db(want, out) >= STATIC_MIN_SQNR_DB, report


def scalar_mul_operands(package: Path) -> list[tuple[str, float]]:
    fn = load_program(package).functions["main"]
    out = []
    for op in fn.operations:
        if op.op_type == "mul":
            y = op.inputs["y"].val
            if y is not None and np.ndim(y) == 0:
                out.append((op.name, float(y)))
    return out


def test_int8_scalar_constants_match_fp32_program(fp32_package, static_package):
    """The scalar multipliers (attention 1/sqrt(d), token-pool 0.5) depend only on the architecture,
    so the fp16 program must carry the fp32 program's values (to fp16 precision). coremltools 9.0
    folds a quantized scalar as scale * (q - zero_point) in int8 arithmetic, where 127 - (-128)
    wraps to -1: 0.25 became -0.25/255 and the int8 encoder's output no longer depended on the
    image. dtconvert.quantize keeps such multiplies in float; this guards that it stays so."""
    fp32, int8 = scalar_mul_operands(fp32_package), scalar_mul_operands(static_package)
    assert len(fp32) == len(int8) > 0
    wrong = [(n8, v8, v32) for (n8, v8), (_, v32) in zip(int8, fp32) if not np.isclose(v8, v32, rtol=1e-3)]
    assert not wrong, "int8 program multiplies by " + ", ".join(f"{v8:.6g} in {n} where fp32 has {v32:g}" for n, v8, v32 in wrong)


def test_package_files_unchanged(fp32_package, int8_package, static_package, fp32_reference):
    for package in (fp32_package, int8_package, static_package):
        before = file_hashes(package)
        io_signature(package)
        program_ops(package)
        check_ops(package)
        MILReference(package).run({"image": fp32_reference.images[:1]})
        assert file_hashes(package) == before


# ---- twins: the checks fail when they should ---------------------------------------------------


def copy_package(package: Path, tmp_path: Path) -> Path:
    copy = tmp_path / package.name
    shutil.copytree(package, copy)
    return copy


def read_spec(package: Path):
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString((package / MODEL_FILE).read_bytes())
    return spec


def main_block(spec):
    main = spec.mlProgram.functions["main"]
    return main.block_specializations[main.opset]


def test_perturbed_weight_fails_fp32_check(fp32_package, fp32_reference, tmp_path):
    copy = copy_package(fp32_package, tmp_path)
    # Change one float of the patch-embedding conv weight inside weights/weight.bin. A blob starts
    # with a 64-byte header: sentinel 0xDEADBEEF, dtype, size in bytes, offset of the data.
    block = main_block(read_spec(copy))
    conv = next(op for op in block.operations if op.type == "conv")
    weight = conv.inputs["weight"].arguments[0].name
    const = next(op for op in block.operations if op.type == "const" and op.outputs[0].name == weight)
    blob = const.attributes["val"].blobFileValue
    assert blob.fileName.endswith("weights/weight.bin")
    data = bytearray((copy / WEIGHTS_FILE).read_bytes())
    sentinel, _, size, offset = struct.unpack_from("<IIQQ", data, blob.offset)
    assert sentinel == 0xDEADBEEF and size == 64 * 1 * 2 * 2 * 4
    (value,) = struct.unpack_from("<f", data, offset)
    struct.pack_into("<f", data, offset, value + 0.05)
    (copy / WEIGHTS_FILE).write_bytes(bytes(data))

    images, wire = fp32_reference.images[:32], fp32_reference.wire[:32]
    assert np.abs(MILReference(fp32_package).run_batch("image", images) - wire).max() <= FP32_MAX_ABS
    err = np.abs(MILReference(copy).run_batch("image", images) - wire).max()
    assert err > FP32_MAX_ABS * 10, f"a perturbed weight went unnoticed (max |diff| {err:.3g})"


def test_unknown_op_from_allow_list(int8_package, monkeypatch):
    monkeypatch.setattr(mil_reference, "SUPPORTED_OPS", SUPPORTED_OPS - {"softmax"})
    assert check_ops(int8_package) == ["softmax"]
    with pytest.raises(UnknownMILOp) as err:
        MILReference(int8_package)
    assert err.value.op_type == "softmax" and err.value.op_name == "softmax_cast_fp16"
    assert str(err.value) == "MIL op 'softmax' (softmax_cast_fp16) is not in the reference interpreter's allow-list"


def test_unknown_op_in_program(fp32_package, tmp_path):
    # A real MIL op the interpreter does not implement, written into the saved program.
    copy = copy_package(fp32_package, tmp_path)
    spec = read_spec(copy)
    relu = next(op for op in main_block(spec).operations if op.type == "relu")
    relu.type = "gelu"
    (copy / MODEL_FILE).write_bytes(spec.SerializeToString())
    assert check_ops(copy) == ["gelu"]
    assert program_ops(copy)["gelu"] == 1
    with pytest.raises(UnknownMILOp, match=r"MIL op 'gelu' \(relu\) is not in the reference interpreter's allow-list"):
        MILReference(copy)


# ---- op semantics against coremltools' own value inference ----------------------------------------


def run_ops(build) -> list[tuple[object, np.ndarray, np.ndarray | None]]:
    """Build ops on constant inputs with the MIL builder (which computes each op's value with
    coremltools' value inference where it has one) and execute the same program with the MIL
    reference. Returns (var, reference result, coremltools value or None) per output."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=ct.target.iOS17)
    def prog(unused):
        return tuple(build(mb))

    def coremltools_value(var):
        if var.val is not None:
            return var.val
        # dequantize and constexpr_* ops evaluate on request only.
        materialize = getattr(var.op, "materialized_val_inference", None)
        return None if materialize is None else materialize()

    got = MILReference.from_program(prog).run({"unused": np.zeros(1, np.float32)})
    return [(var, got[var.name], coremltools_value(var)) for var in prog.functions["main"].outputs]


RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)


def test_slice_by_index_masks():
    results = run_ops(lambda mb: [
        mb.slice_by_index(x=X, begin=[0, 0, 0, 0], end=[2, 3, 4, 2], end_mask=[True, True, True, False]),
        mb.slice_by_index(x=X, begin=[1, 1, -3, 0], end=[0, 3, -1, 5], begin_mask=[False, True, False, False],
                          end_mask=[True, False, False, False], stride=[1, 2, 1, 2]),
        mb.slice_by_index(x=X, begin=[1, 0, 2, 0], end=[0, 3, 0, 5], squeeze_mask=[True, False, True, False]),
        mb.slice_by_index(x=X, begin=[0, 0, 0, 3], end=[2, 3, 4, 99], begin_mask=[False, False, False, True]),
    ])
    expected = [X[:, :, :, :2], X[1:, :3:2, -3:-1, ::2], X[1, :, 2, :], X[:, :, :, :]]
    for (var, got, cml), want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, cml)
        assert got.shape == var.shape


def test_elementwise_reductions_and_normalization():
    gamma, beta = RNG.standard_normal((4, 5)).astype(np.float32), RNG.standard_normal((4, 5)).astype(np.float32)
    results = run_ops(lambda mb: [
        mb.add(x=X, y=X[0, :, :, :1]),
        mb.sub(x=X, y=X[1]),
        mb.mul(x=X, y=np.float32(0.25)),
        mb.real_div(x=X, y=np.float32(3.0)),
        mb.relu(x=X),
        mb.softmax(x=X, axis=1),
        mb.reduce_mean(x=X, axes=[1, -1], keep_dims=True),
        mb.reduce_mean(x=X, axes=[2]),
        mb.layer_norm(x=X, axes=[2, 3], gamma=gamma, beta=beta, epsilon=np.float32(1e-3)),
        mb.layer_norm(x=X, axes=[-1]),
        mb.transpose(x=X, perm=[0, 1, -1, -2]),
        mb.reshape(x=X, shape=[2, -1, 5]),
        mb.matmul(x=X, y=X, transpose_y=True),
        mb.matmul(x=X, y=X, transpose_x=True),
        mb.linear(x=X, weight=X[0, 0], bias=X[1, 1, :, 0]),
        mb.cast(x=X, dtype="fp16"),
    ])
    for var, got, cml in results:
        assert cml is not None, var.op.op_type
        assert got.shape == var.shape and got.dtype == nptype_from_builtin(var.dtype), var.op.op_type
        np.testing.assert_allclose(got, cml, rtol=2e-6, atol=2e-6, err_msg=var.op.op_type)


def test_quantize_dequantize():
    x16 = (X * 2).astype(np.float16)
    scale = np.array([0.02, 0.05, 0.011], np.float32)
    zp = np.array([3, -7, 0], np.int8)
    q = RNG.integers(-128, 128, size=X.shape).astype(np.int8)
    results = run_ops(lambda mb: [
        mb.quantize(input=x16, scale=np.float16(0.0213), zero_point=np.int8(3), output_dtype="int8"),
        mb.quantize(input=X, scale=scale, zero_point=zp, axis=1, output_dtype="int8"),
        mb.quantize(input=np.abs(x16), scale=np.float16(0.01), output_dtype="uint8"),
        mb.dequantize(input=q, scale=scale, zero_point=zp, axis=-3),
        mb.dequantize(input=q, scale=np.float16(0.0172), zero_point=np.int8(-5)),
    ])
    for var, got, cml in results:
        assert got.dtype == np.asarray(cml).dtype
        np.testing.assert_array_equal(got, cml, err_msg=var.op.name)
    # Ties go to even, as in torch's quantize_per_tensor.
    (_, got, _), = run_ops(lambda mb: [mb.quantize(input=np.array([0.5, 1.5, 2.5, -0.5], np.float32),
                                                    scale=np.float32(1.0), output_dtype="int8")])
    np.testing.assert_array_equal(got, np.array([0, 2, 2, 0], np.int8))


def test_constexpr_affine_dequantize():
    q = RNG.integers(-128, 128, size=(3, 4)).astype(np.int8)
    scale, zp = np.array([0.5, 0.25, 0.125], np.float16), np.array([1, -2, 3], np.int8)
    (var, got, cml), = run_ops(lambda mb: [
        mb.constexpr_affine_dequantize(quantized_data=q, zero_point=zp, scale=scale, axis=0)])
    want = ((q.astype(np.float32) - zp[:, None]) * scale[:, None].astype(np.float32)).astype(np.float16)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, cml)


@pytest.mark.parametrize("strides,dilations,pad_type,pad", [
    ([1, 1], [1, 1], "valid", [0, 0, 0, 0]),
    ([2, 2], [1, 1], "valid", [0, 0, 0, 0]),
    ([2, 1], [1, 2], "custom", [1, 0, 2, 1]),
])
def test_conv_matches_torch(strides, dilations, pad_type, pad):
    x = RNG.standard_normal((2, 3, 9, 8)).astype(np.float32)
    w = RNG.standard_normal((5, 3, 3, 2)).astype(np.float32)
    b = RNG.standard_normal(5).astype(np.float32)
    (var, got, _), = run_ops(lambda mb: [mb.conv(x=x, weight=w, bias=b, strides=strides, dilations=dilations,
                                                  pad_type=pad_type, pad=pad)])
    padded = torch.nn.functional.pad(torch.from_numpy(x), (pad[2], pad[3], pad[0], pad[1]))
    want = torch.nn.functional.conv2d(padded, torch.from_numpy(w), torch.from_numpy(b), stride=strides,
                                      dilation=dilations).numpy()
    assert got.shape == want.shape == var.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fp16_is_stored_as_fp16():
    # An fp16 program keeps every intermediate in float16: 1 + 2**-11 rounds back to 1 in fp16.
    one = np.ones(4, np.float16)
    (var, got, _), = run_ops(lambda mb: [mb.sub(x=mb.add(x=one, y=np.float16(2 ** -11)), y=one)])
    assert got.dtype == np.float16 and np.all(got == 0)
    (var, got, _), = run_ops(lambda mb: [mb.sub(x=mb.add(x=one.astype(np.float32), y=np.float32(2 ** -11)),
                                                y=one.astype(np.float32))])
    assert got.dtype == np.float32 and np.all(got == 2 ** -11)


@pytest.mark.parametrize("build,detail", [
    (lambda mb: mb.conv(x=np.ones((1, 4, 5, 5), np.float32), weight=np.ones((4, 2, 3, 3), np.float32), groups=2,
                        pad_type="valid"), "groups=2"),
    (lambda mb: mb.conv(x=np.ones((1, 1, 5, 5), np.float32), weight=np.ones((1, 1, 3, 3), np.float32),
                        pad_type="same"), "pad_type='same'"),
    (lambda mb: mb.conv(x=np.ones((1, 1, 5), np.float32), weight=np.ones((1, 1, 3), np.float32),
                        pad_type="valid"), "1-D convolution"),
    (lambda mb: mb.cast(x=np.ones(3, np.float32), dtype="int32"), "cast to 'int32'"),
    (lambda mb: mb.reshape(x=np.ones((2, 3), np.float32), shape=[0, 3]), "shape=[0, 3]"),
    (lambda mb: mb.slice_by_index(x=np.ones(5, np.float32), begin=[4], end=[0], stride=[-1]), "stride [-1]"),
])
def test_unimplemented_forms_are_refused(build, detail):
    with pytest.raises(UnsupportedMILOp, match=re.escape(detail)) as err:
        run_ops(lambda mb: [build(mb)])
    assert isinstance(err.value, UnknownMILOp)
