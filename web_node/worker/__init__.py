"""The build worker behind ``web-node worker``: registers with a gateway and runs build steps.

    from web_node.worker import WorkerOptions, run_worker
    await nursery.start(run_worker, WorkerOptions(gateway_url=..., token=..., name=..., work_dir=...))

Names are loaded on first use, so that ``web-node`` commands other than
``worker`` do not pay for importing the HTTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from web_node.worker._client import ClaimedBuild, GatewayClient, GatewayError, GatewayRefused
    from web_node.worker._worker import Worker, WorkerOptions, run_worker

__all__ = ["ClaimedBuild", "GatewayClient", "GatewayError", "GatewayRefused", "Worker", "WorkerOptions", "run_worker"]

_WHERE = {
    "ClaimedBuild": "_client", "GatewayClient": "_client", "GatewayError": "_client", "GatewayRefused": "_client",
    "Worker": "_worker", "WorkerOptions": "_worker", "run_worker": "_worker",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
