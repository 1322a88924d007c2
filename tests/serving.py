"""The real ``dtconvert serve`` as a subprocess on a free loopback port, for tests.

    with running_server(export_dir, "--max-batch", "8") as server:
        urllib.request.urlopen(server.url + "/healthz")

The launcher is the product's own (:mod:`dtconvert.serve.process`), which the benchmarks use too.
"""

from __future__ import annotations

from dtconvert.serve.process import ServerProcess, running_server

__all__ = ["ServerProcess", "running_server"]
