"""Draw ios_demo/docs/flow.png, the device → wire → cloud diagram in ios_demo/README.md.

    python ios_demo/docs/draw_flow.py      (from the repository root; needs matplotlib)
"""

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

plt.switch_backend("Agg")  # no display needed

fig, ax = plt.subplots(figsize=(11, 4.2), dpi=150)
ax.set_xlim(0, 110); ax.set_ylim(0, 42); ax.axis("off")

def box(x, y, w, h, title, lines, color):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.6,rounding_size=1.5", fc=color, ec="#333333", lw=1.2))
    ax.text(x + w / 2, y + h - 3.0, title, ha="center", va="center", fontsize=11, weight="bold")
    for i, line in enumerate(lines):
        ax.text(x + w / 2, y + h - 7.4 - 3.4 * i, line, ha="center", va="center", fontsize=8.6)

def arrow(x0, y0, x1, y1, label=None, dy=1.8, dx=0.0, ha="center"):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=16, lw=1.4, color="#333333"))
    if label:
        ax.text((x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy, label, ha=ha, va="bottom", fontsize=8.4, style="italic")

# The phone (DTDemo app + DTCore)
ax.add_patch(FancyBboxPatch((1, 1.5), 58, 37.5, boxstyle="round,pad=0.4,rounding_size=2.5", fc="#f7f7f7", ec="#888888", lw=1, ls="--"))
ax.text(30, 37.2, "iPhone / simulator: DTDemo app + DTCore", ha="center", fontsize=10, color="#555555")
box(3, 18, 16, 16, "Image", ["held-out digit", "photo or camera", "uint8 pixels"], "#fff3cd")
box(23, 18, 15, 16, "Preprocess", ["x·scale, resize,", "(x − mean)/std", "NCHW float32"], "#e2f0d9")
box(42, 18, 15, 16, "Core ML", ["device encoder", ".mlpackage,", "compiled on device"], "#dae8fc")
box(23, 4, 34, 9.5, "Quantize + wire message", ["q = clamp(round(x/scale)+zp), header 32+4·rank B"], "#e2f0d9")
arrow(19.6, 26, 22.4, 26)
arrow(38.6, 26, 41.4, 26)
arrow(49.5, 17.4, 49.5, 14.1, "float wire", dy=-1.0, dx=1.2, ha="left")

# The cloud
box(72, 18, 34, 16, "dtconvert serve", ["POST /v1/decode (octet-stream)", "TorchScript cloud decoder,", "micro-batched"], "#f8cecc")
box(72, 4, 34, 9.5, "Predictions (JSON)", ["top-k per task, timing"], "#f8cecc")
arrow(57.6, 10.5, 71.4, 24)
ax.text(63.0, 18.9, "int8 wire message", rotation=44, ha="center", va="center", fontsize=8.4, style="italic")
arrow(89, 17.4, 89, 14.1)
arrow(71.4, 7, 57.6, 7, "labels, scores", dy=0.8)

ax.text(55, 40.6, "manifest.json (bundled in the app's Export folder) gives every name, shape, mean, std, scale, label", ha="center", fontsize=8.4, color="#555555")
fig.tight_layout()
fig.savefig("ios_demo/docs/flow.png", bbox_inches="tight", facecolor="white")
