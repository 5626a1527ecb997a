"""Hangar's Python SDK.

Two parts, in one package:

- :class:`Client` and :class:`AsyncClient`: the API client, one attribute per
  resource (``client.agents``, ``client.instances``, ``client.jobs``…)::

      import hangar

      with hangar.Client() as client:          # HANGAR_URL / HANGAR_KEY, or `hangar login`
          agent = client.deploy("./my-agent")
          print(client.agents.invoke(agent["id"], {"text": "hi"})["output"])

- :mod:`hangar.agent`: serves Hangar's agent contract (HTTP invoke, streaming,
  health, stdin, logs, graceful stop) with the standard library only.

The client needs ``httpx``; the agent helper needs nothing, so an agent that
carries this directory beside its ``main.py`` runs without installing
anything: the client's modules are imported only when first used.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_ERRORS = (
    "HangarError", "APIConnectionError", "APIStatusError", "BadRequestError", "AuthenticationError",
    "PermissionDeniedError", "NotFoundError", "ConflictError", "NameTakenError", "NotRunningError",
    "JobConflictError", "PayloadTooLargeError", "UnprocessableError", "ResourceLimitExceededError",
    "CloudUnreachableError", "RateLimitedError", "InternalServerError", "DriverUnavailableError",
    "AgentError", "UnavailableError", "RuntimeUnavailableError", "InvokeTimeoutError", "JobFailedError",
)
_EVENTS = ("StreamStart", "StreamChunk", "StreamDone", "StreamEvent", "LogLine", "ServerEvent")

__all__ = ["Client", "AsyncClient", "Job", "AsyncJob", "ExecResult", *_ERRORS, *_EVENTS]

if TYPE_CHECKING:
    from ._async import AsyncClient, AsyncJob
    from ._common import LogLine, ServerEvent, StreamChunk, StreamDone, StreamEvent, StreamStart
    from ._errors import *  # noqa: F403
    from ._sync import Client, ExecResult, Job


def __getattr__(name: str) -> Any:
    # Lazy, so `from hangar import agent` never imports httpx.
    if name in ("Client", "Job", "ExecResult"):
        from . import _sync as module
    elif name in ("AsyncClient", "AsyncJob"):
        from . import _async as module  # type: ignore[no-redef]
    elif name in _ERRORS:
        from . import _errors as module  # type: ignore[no-redef]
    elif name in _EVENTS:
        from . import _common as module  # type: ignore[no-redef]
    else:
        raise AttributeError(f"module 'hangar' has no attribute {name!r}")
    return getattr(module, name)
