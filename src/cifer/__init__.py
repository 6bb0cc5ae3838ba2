"""Cifer: privacy-preserving, Byzantine-robust federated learning on a BFT ledger.

Layers (dependencies point downward only):
  cifer.app      contracts, API, CLI
  cifer.compute  federated learning and privacy (off-chain)
  cifer.base     crypto, encoding, chain, consensus, stores
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cifer.app.sdk.client import Client, ClientError

__all__ = ["Client", "ClientError", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: ``import cifer`` stays light (no httpx/numpy) until the SDK is used.
    if name in ("Client", "ClientError"):
        from cifer.app.sdk import client

        return getattr(client, name)
    raise AttributeError(f"module 'cifer' has no attribute {name!r}")
