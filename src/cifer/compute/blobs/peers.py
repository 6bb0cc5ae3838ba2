"""Moving blobs between nodes over their HTTP APIs: fetch what is missing, push what is new.

Peers are untrusted: every fetched blob is checked against the hash it was asked for
before it is stored, so a peer serving wrong bytes costs time, never correctness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import httpx

from cifer.compute.blobs.store import BlobError, BlobStore, check_blob_hash

log = logging.getLogger("cifer.blobs")

#: Header marking a PUT as replication from a peer, which the receiver must not replicate
#: again (otherwise every upload would bounce around the mesh).
REPLICA_HEADER = "X-Cifer-Replica"

_MAX_FETCH_THREADS = 8


class BlobFetcher:
    """Fetches missing blobs from peer nodes and replicates new ones to them.

    ``peers`` are node API base URLs such as ``http://127.0.0.1:26657``.
    """

    def __init__(self, store: BlobStore, peers: list[str], timeout_s: float = 5.0) -> None:
        self.store = store
        self.peers = [p.rstrip("/") for p in peers]
        self.timeout_s = timeout_s

    # ------------------------------------------------------------------ fetch

    def fetch_missing(self, hashes: Sequence[bytes], timeout_s: float | None = None) -> list[bytes]:
        """Fetch every blob in ``hashes`` not already stored; returns those still missing
        when the deadline (``timeout_s``, default the fetcher's) passes; empty = all here.

        Blobs are fetched in parallel, each trying the peers in turn, so the deadline holds
        for the whole batch rather than per blob.
        """
        for h in hashes:
            check_blob_hash(h)
        missing = [h for h in dict.fromkeys(hashes) if not self.store.has(h)]
        if not missing or not self.peers:
            return missing
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        # Every peer is asked at once: a peer that is itself blocked (e.g. waiting on a blob
        # from us) must not use up the deadline before the one that holds the blob is tried.
        jobs = [(h, peer) for h in missing for peer in self.peers]
        pool = ThreadPoolExecutor(
            max_workers=min(_MAX_FETCH_THREADS, len(jobs)), thread_name_prefix="blob-fetch"
        )
        try:
            futures = [pool.submit(self._fetch_from, h, peer, deadline) for h, peer in jobs]
            while time.monotonic() < deadline and not all(self.store.has(h) for h in missing):
                wait(futures, timeout=min(0.05, max(0.0, deadline - time.monotonic())))
                if all(f.done() for f in futures):
                    break
        finally:
            # Do not wait for stragglers: each stops by itself at the deadline.
            pool.shutdown(wait=False, cancel_futures=True)
        return [h for h in missing if not self.store.has(h)]

    def _fetch_from(self, h: bytes, peer: str, deadline: float) -> None:
        if self.store.has(h) or time.monotonic() >= deadline:
            return
        with httpx.Client() as client:
            data = self._download(client, f"{peer}/blobs/{h.hex()}", deadline)
        if data is None or self.store.has(h):
            return
        try:
            self.store.put(data, expected=h)
        except BlobError as exc:
            log.warning("peer %s served a bad blob %s: %s", peer, h.hex()[:16], exc)

    def _download(self, client: httpx.Client, url: str, deadline: float) -> bytes | None:
        """GET ``url`` within the deadline and the store's size limit, else None."""
        limit = self.store.max_bytes
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with client.stream("GET", url, timeout=remaining) as r:
                if r.status_code != 200:
                    log.debug("GET %s: HTTP %d", url, r.status_code)
                    return None
                declared = r.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    log.warning("GET %s: %s bytes is over the %d limit", url, declared, limit)
                    return None
                chunks: list[bytes] = []
                size = 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        log.warning("GET %s: body over the %d byte limit", url, limit)
                        return None
                    if time.monotonic() > deadline:
                        log.debug("GET %s: deadline passed mid-download", url)
                        return None
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            log.debug("GET %s failed: %s", url, exc)
            return None

    # ------------------------------------------------------------------ replicate

    async def replicate(self, h: bytes, data: bytes) -> None:
        """Push a blob to every peer that lacks it. Best effort: failures are logged at
        debug level and never raised (the blob is still here and can be fetched)."""
        if not self.peers:
            return
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                await asyncio.gather(*(self._push_async(client, p, h, data) for p in self.peers))
        except Exception as exc:  # never let replication break the caller
            log.debug("replicating blob %s failed: %s", h.hex()[:16], exc)

    async def _push_async(
        self, client: httpx.AsyncClient, peer: str, h: bytes, data: bytes
    ) -> None:
        url = f"{peer}/blobs/{h.hex()}"
        try:
            if (await client.head(url)).status_code == 200:
                return
            r = await client.put(url, content=data, headers=_PUT_HEADERS)
            if r.status_code not in (200, 201):
                log.debug("PUT %s: HTTP %d %s", url, r.status_code, r.text[:200])
        except httpx.HTTPError as exc:
            log.debug("PUT %s failed: %s", url, exc)

    def replicate_sync(self, h: bytes, data: bytes) -> None:
        """:meth:`replicate` for callers without an event loop (peers pushed in parallel)."""
        if not self.peers:
            return
        try:
            with (
                httpx.Client(timeout=self.timeout_s) as client,
                ThreadPoolExecutor(max_workers=min(_MAX_FETCH_THREADS, len(self.peers))) as pool,
            ):
                list(pool.map(lambda p: self._push_sync(client, p, h, data), self.peers))
        except Exception as exc:
            log.debug("replicating blob %s failed: %s", h.hex()[:16], exc)

    def _push_sync(self, client: httpx.Client, peer: str, h: bytes, data: bytes) -> None:
        url = f"{peer}/blobs/{h.hex()}"
        try:
            if client.head(url).status_code == 200:
                return
            r = client.put(url, content=data, headers=_PUT_HEADERS)
            if r.status_code not in (200, 201):
                log.debug("PUT %s: HTTP %d %s", url, r.status_code, r.text[:200])
        except httpx.HTTPError as exc:
            log.debug("PUT %s failed: %s", url, exc)


_PUT_HEADERS = {"content-type": "application/octet-stream", REPLICA_HEADER: "1"}
