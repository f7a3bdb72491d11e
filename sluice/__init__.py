"""sluice: a governed inference gateway."""

__version__ = "0.1.0"
