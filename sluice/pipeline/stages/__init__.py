"""The pipeline's stages, one concern each."""

from .account import Account
from .authenticate import Authenticate
from .authorize import Authorize
from .decode import Decode
from .route import Route

__all__ = ["Account", "Authenticate", "Authorize", "Decode", "Route"]
