"""The sweep's grid: split configurations and wires, parsed from the command line."""

from __future__ import annotations

from dataclasses import dataclass

from dtconvert.errors import UserError

WIRES = ("int8", "fp32")


@dataclass(frozen=True)
class SplitConfig:
    pool_at: tuple[int, ...]
    bottleneck: int

    @property
    def pool_text(self) -> str:
        return "+".join(str(i) for i in self.pool_at) if self.pool_at else "none"

    @property
    def id(self) -> str:
        return f"pool-{self.pool_text}_b{self.bottleneck}"


def parse_pool_at(text: str) -> list[tuple[int, ...]]:
    """``"none,1,1+2"`` → ``[(), (1,), (1, 2)]``: configurations separated by commas, each ``none``
    or the recipe's ``pool_at`` layers (0-based device layers whose input is halved) joined by ``+``."""
    configs = []
    for item in text.split(","):
        item = item.strip()
        if item == "none":
            layers: tuple[int, ...] = ()
        else:
            parts = item.split("+")
            if not item or not all(p.strip().isdigit() for p in parts):
                raise UserError(
                    f"--pool-at {text!r}: each configuration is 'none' or layer numbers joined by '+', e.g. --pool-at none,1,1+2"
                )
            layers = tuple(sorted(int(p) for p in parts))
        if layers not in configs:
            configs.append(layers)
    return configs


def parse_bottleneck(text: str) -> list[int]:
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit():
            raise UserError(f"--bottleneck {text!r}: expected comma-separated widths ≥ 0 (0: no bottleneck), e.g. --bottleneck 4,8,16")
        if int(item) not in values:
            values.append(int(item))
    return values


def parse_wire(text: str) -> list[str]:
    values = []
    for item in text.split(","):
        item = item.strip()
        if item not in WIRES:
            raise UserError(f"--wire {text!r}: expected a comma-separated list of {', '.join(WIRES)}")
        if item not in values:
            values.append(item)
    return values


def default_pool_at(pool_at: tuple[int, ...] | list[int]) -> list[tuple[int, ...]]:
    """No pooling, then every prefix of the recipe's own pooling layers: one stage at a time."""
    layers = sorted(pool_at)
    return [(), *(tuple(layers[: k + 1]) for k in range(len(layers)))]
