"""Content-addressed blob store for model weights and updates (only hashes go on chain)."""

from cifer.compute.blobs.peers import REPLICA_HEADER, BlobFetcher
from cifer.compute.blobs.store import (
    BlobError,
    BlobStore,
    blob_hash,
    check_blob_hash,
    parse_blob_hash,
)

__all__ = [
    "REPLICA_HEADER",
    "BlobError",
    "BlobFetcher",
    "BlobStore",
    "blob_hash",
    "check_blob_hash",
    "parse_blob_hash",
]
