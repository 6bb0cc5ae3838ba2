"""Cifer: privacy-preserving, Byzantine-robust federated learning on a BFT ledger.

Layers (dependencies point downward only):
  cifer.app      contracts, API, CLI
  cifer.compute  federated learning and privacy (off-chain)
  cifer.base     crypto, encoding, chain, consensus, stores
"""

__version__ = "0.1.0"
