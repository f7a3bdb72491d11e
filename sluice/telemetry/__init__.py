"""What happened: Prometheus metrics, the usage ledger writer, masked structured logs."""

from .ledger import UsageLedger
from .logging import SecretMasker, configure
from .metrics import Metrics

__all__ = ["Metrics", "SecretMasker", "UsageLedger", "configure"]
