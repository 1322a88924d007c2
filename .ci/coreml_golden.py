"""Run the exported Core ML encoder with Core ML itself (macOS only) on the golden inputs.

    python .ci/coreml_golden.py EXPORT_DIR [--junit REPORT.xml]

Needs only numpy, coremltools and torch, so the macOS CI job does not install the toolchain.
Checks, against the golden files `dtconvert export` wrote on Linux:
  - CPU only: wire tensor within the fp32 bound (fp32 export) or cosine ≥ 0.99 (int8), and
    the cloud decoder's predictions on the int8 wire equal the golden predictions;
  - all compute units: the same with the looser bounds of fp16 hardware (cosine ≥ 0.98,
    predictions agreeing on all but at most one golden image).
Exit 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from xml.etree import ElementTree

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--junit", type=Path)
    args = parser.parse_args()

    import coremltools as ct
    import torch

    manifest = json.loads((args.export_dir / "manifest.json").read_text())
    golden = args.export_dir / manifest["golden"]["path"]
    images = np.load(golden / "input.npy")
    want_wire = np.load(golden / "wire_fp32.npy")
    tasks = [t["name"] for t in manifest["tasks"]]
    want_logits = {t: np.load(golden / f"logits_{t}.npy") for t in tasks}
    scale, zero_point = manifest["wire"]["scale"], manifest["wire"]["zero_point"]
    entries = {a["target"]: a for a in manifest["artifacts"]}
    decoder = torch.jit.load(str(args.export_dir / entries["torchscript"]["path"])).eval()
    package = str(args.export_dir / entries["coreml"]["path"])
    fp32 = manifest["precision"] == "fp32"

    results = []
    for label, units, min_cosine, max_abs, max_flips in (
        ("CPU only", ct.ComputeUnit.CPU_ONLY, 0.99, 1e-4, 0),
        ("all compute units", ct.ComputeUnit.ALL, 0.98, 1e-2, 1),
    ):
        model = ct.models.MLModel(package, compute_units=units)
        wire = np.concatenate([model.predict({"image": images[i : i + 1]})["wire"] for i in range(len(images))])
        error = float(np.abs(wire - want_wire).max())
        cosine = float((wire.ravel() @ want_wire.ravel()) / (np.linalg.norm(wire) * np.linalg.norm(want_wire)))
        wire_ok = error <= max_abs if fp32 else cosine >= min_cosine
        results.append((label, "wire", wire_ok, f"max abs {error:.3g}, cosine {cosine:.5f}"))
        q = np.clip(np.round(wire / np.float32(scale)) + zero_point, -128, 127).astype(np.int8)
        with torch.no_grad():
            logits = decoder(torch.from_numpy(q), torch.tensor([scale]), torch.tensor([zero_point], dtype=torch.int32))
        for task, got in zip(tasks, logits):
            flips = int((got.numpy().argmax(-1) != want_logits[task].argmax(-1)).sum())
            results.append((label, f"predictions [{task}]", flips <= max_flips, f"{flips} of {len(images)} differ (bound ≤ {max_flips})"))

    for label, check, ok, detail in results:
        print(f"{'pass' if ok else 'FAIL'}  Core ML {label}: {check}: {detail}")
    if args.junit:
        suite = ElementTree.Element("testsuite", name="Core ML golden", tests=str(len(results)), failures=str(sum(not r[2] for r in results)))
        for label, check, ok, detail in results:
            case = ElementTree.SubElement(suite, "testcase", classname=entries["coreml"]["path"], name=f"Core ML {label}: {check}")
            if not ok:
                ElementTree.SubElement(case, "failure", message=detail)
        ElementTree.ElementTree(suite).write(args.junit, encoding="unicode", xml_declaration=True)
    return 0 if all(r[2] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
