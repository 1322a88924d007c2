"""The peak-memory probe's process: ``python -m dtconvert.bench SPEC INPUTS.npy CALLS`` (see ``measure``)."""

import sys

from dtconvert.bench.measure import probe_main

probe_main(sys.argv[1:])
