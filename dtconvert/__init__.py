"""dtconvert: split a Device Tuning model into an on-device encoder and a shared cloud decoder."""

__version__ = "0.1.0"
