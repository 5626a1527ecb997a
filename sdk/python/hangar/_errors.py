"""Typed errors: one class per kind of failure the server's error table has.

Every API error arrives as the envelope ``{"error": {"code", "message", ...}}``;
:func:`error_for` picks the class from the ``code`` first (the table's rows:
``AGENT_NOT_FOUND`` is a :class:`NotFoundError` whatever path raised it), then
from the HTTP status for codes this SDK does not know yet, so a newer server's
new code still lands in the right family. A job's stored error
(``{code, message}`` without a status) goes through the same table.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

__all__ = [
    "HangarError",
    "APIConnectionError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "NameTakenError",
    "NotRunningError",
    "JobConflictError",
    "PayloadTooLargeError",
    "UnprocessableError",
    "ResourceLimitExceededError",
    "CloudUnreachableError",
    "RateLimitedError",
    "InternalServerError",
    "DriverUnavailableError",
    "AgentError",
    "UnavailableError",
    "RuntimeUnavailableError",
    "InvokeTimeoutError",
    "JobFailedError",
    "error_for",
]


class HangarError(Exception):
    """Anything this SDK raises about the API."""

    def __init__(self, message: str, *, code: str = "", status: Optional[int] = None,
                 body: Optional[dict] = None) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        #: The envelope's machine-readable ``code`` (``AGENT_NOT_FOUND``).
        self.code = code
        #: The envelope's ``message``, for a person.
        self.message = message
        #: The HTTP status (``None`` for a job's stored error or a transport failure).
        self.status = status
        #: The whole ``error`` object: ``field``, ``current_status``, ``details``…
        self.body: dict = body or {}

    @property
    def field(self) -> Optional[str]:
        """The request field at fault, when the server names one."""
        return self.body.get("field")

    @property
    def details(self) -> Any:
        """The error's ``details``, when it has any."""
        return self.body.get("details")


class APIConnectionError(HangarError):
    """The server could not be reached, or the connection broke."""


class APIStatusError(HangarError):
    """The server answered an error status."""


class BadRequestError(APIStatusError):
    """400 ``INVALID_REQUEST`` (``.field`` names what was wrong)."""


class AuthenticationError(APIStatusError):
    """401 ``UNAUTHORIZED``: no key, or a key that does not work."""


class PermissionDeniedError(APIStatusError):
    """403 ``FORBIDDEN``: the key's role may not do this."""


class NotFoundError(APIStatusError):
    """404 ``<KIND>_NOT_FOUND`` (or ``NOT_FOUND`` for a route)."""


class ConflictError(APIStatusError):
    """409: the object's state does not allow this now."""


class NameTakenError(ConflictError):
    """409 ``<KIND>_NAME_TAKEN``."""


class NotRunningError(ConflictError):
    """409 ``AGENT_NOT_RUNNING`` / ``INSTANCE_NOT_RUNNING`` (``.current_status``)."""

    @property
    def current_status(self) -> Optional[str]:
        return self.body.get("current_status")


class JobConflictError(ConflictError):
    """409 ``JOB_IN_PROGRESS`` / ``JOB_CANCELLED`` / ``JOB_FINISHED``…: a job's state."""


class PayloadTooLargeError(APIStatusError):
    """413 ``PAYLOAD_TOO_LARGE``."""


class UnprocessableError(APIStatusError):
    """422."""


class ResourceLimitExceededError(UnprocessableError):
    """422 ``RESOURCE_LIMIT_EXCEEDED``: a quota is reached (``.details``)."""


class CloudUnreachableError(UnprocessableError):
    """422 ``CLOUD_UNREACHABLE``."""


class RateLimitedError(APIStatusError):
    """429 ``RATE_LIMITED``: ``.retry_after`` seconds until the key's next request."""

    @property
    def retry_after(self) -> Optional[float]:
        value = self.body.get("retry_after_seconds")
        return float(value) if value is not None else None


class InternalServerError(APIStatusError):
    """500 ``INTERNAL_ERROR`` (the cause is in the server's log, under ``request_id``)."""


class DriverUnavailableError(APIStatusError):
    """501 ``DRIVER_UNAVAILABLE``: the cloud needs a driver this server lacks."""


class AgentError(APIStatusError):
    """502: the agent failed (``AGENT_ERROR``, ``AGENT_BAD_RESPONSE``, ``AGENT_UNREACHABLE``)."""


class UnavailableError(APIStatusError):
    """503: nothing can serve this now (``AGENT_UNAVAILABLE``, ``AGENT_OVERLOADED``,
    ``NODE_UNREACHABLE``, ``JOB_ATTEMPTS_EXHAUSTED``); usually worth retrying."""


class RuntimeUnavailableError(UnavailableError):
    """503 ``RUNTIME_UNAVAILABLE``: the server runs no agents (the message says why)."""


class InvokeTimeoutError(APIStatusError):
    """504 ``INVOKE_TIMEOUT``: the agent did not answer within ``options.timeout``."""


class JobFailedError(HangarError):
    """An async job ended ``failed`` or ``cancelled`` (``.job`` is its last state).

    Also an instance of the class its stored error's code maps to, e.g. a job
    that failed with ``AGENT_ERROR`` is caught by ``except AgentError``.
    """

    job: dict


#: Codes with a class of their own or outside their status's family.
_BY_CODE = {
    "INVALID_REQUEST": BadRequestError,
    "UNAUTHORIZED": AuthenticationError,
    "FORBIDDEN": PermissionDeniedError,
    "AGENT_NOT_RUNNING": NotRunningError,
    "INSTANCE_NOT_RUNNING": NotRunningError,
    "RESOURCE_LIMIT_EXCEEDED": ResourceLimitExceededError,
    "CLOUD_UNREACHABLE": CloudUnreachableError,
    "RATE_LIMITED": RateLimitedError,
    "DRIVER_UNAVAILABLE": DriverUnavailableError,
    "RUNTIME_UNAVAILABLE": RuntimeUnavailableError,
    "AGENT_ERROR": AgentError,
    "AGENT_BAD_RESPONSE": AgentError,
    "AGENT_UNREACHABLE": AgentError,
    "AGENT_UNAVAILABLE": UnavailableError,
    "AGENT_OVERLOADED": UnavailableError,
    "NODE_UNREACHABLE": UnavailableError,
    "JOB_ATTEMPTS_EXHAUSTED": UnavailableError,
    "INVOKE_TIMEOUT": InvokeTimeoutError,
    "INTERNAL_ERROR": InternalServerError,
    "PAYLOAD_TOO_LARGE": PayloadTooLargeError,
}

_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableError,
    429: RateLimitedError,
    500: InternalServerError,
    501: DriverUnavailableError,
    502: AgentError,
    503: UnavailableError,
    504: InvokeTimeoutError,
}


def error_class(code: str, status: Optional[int]) -> type:
    """The class for an error ``code`` (and status, for codes not in the table)."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if code.endswith("_NOT_FOUND"):
        return NotFoundError
    if code.endswith("_NAME_TAKEN"):
        return NameTakenError
    if code.startswith("JOB_"):
        return JobConflictError
    if status is not None:
        if status in _BY_STATUS:
            return _BY_STATUS[status]
        if status >= 500:
            return InternalServerError
    return APIStatusError


def error_for(status: int, payload: Any, text: str = "") -> HangarError:
    """The error for an answer with ``status`` and JSON ``payload`` (or ``text``)."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message", ""))
        body = error
    else:
        # Not the envelope: a proxy in front answered, say.
        code, message, body = f"HTTP_{status}", text[:200], {}
    return error_class(code, status)(message, code=code, status=status, body=body)


@functools.lru_cache(maxsize=None)
def _job_failed_class(family: type) -> type:
    """``JobFailedError`` mixed with the family of its stored code."""
    if family is APIStatusError:
        return JobFailedError
    return type(f"JobFailed{family.__name__}", (JobFailedError, family), {})


def job_error(job: dict) -> JobFailedError:
    """The error raised for a job that ended ``failed`` or ``cancelled``."""
    stored: dict = job["error"] if isinstance(job.get("error"), dict) else {}
    status = str(job.get("status", "")).lower()
    if status == "cancelled":
        code, message = "JOB_CANCELLED", "the job was cancelled"
    else:
        code = str(stored.get("code") or "JOB_FAILED")
        message = str(stored.get("message") or "the job failed")
    err = _job_failed_class(error_class(code, None))(message, code=code, status=None, body=stored)
    err.job = job
    return err
