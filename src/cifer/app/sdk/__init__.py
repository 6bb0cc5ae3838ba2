"""Python SDK for Cifer nodes: create on-chain FL jobs and take part in them as a client.

``cifer.Client`` (lazily re-exported) is :class:`~cifer.app.sdk.client.Client`.
"""

from cifer.app.sdk.client import (
    Client,
    ClientError,
    NodeUnreachable,
    RoundReport,
    RunResult,
    TrainHints,
)

__all__ = ["Client", "ClientError", "NodeUnreachable", "RoundReport", "RunResult", "TrainHints"]
