"""The pipeline's stages, one concern each."""

from .account import Account
from .authenticate import Authenticate
from .authorize import Authorize
from .decode import Decode
from .guard import Guard
from .limit import Admit, Limit, Settle
from .route import Route
from .window import ContextWindow

__all__ = ["Account", "Admit", "Authenticate", "Authorize", "ContextWindow", "Decode", "Guard", "Limit", "Route", "Settle"]
