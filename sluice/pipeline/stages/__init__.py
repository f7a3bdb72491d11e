"""The pipeline's stages, one concern each."""

from .account import Account
from .authenticate import Authenticate
from .authorize import Authorize
from .decode import Decode
from .limit import Admit, Limit, Settle
from .route import Route

__all__ = ["Account", "Admit", "Authenticate", "Authorize", "Decode", "Limit", "Route", "Settle"]
