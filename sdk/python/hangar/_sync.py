"""The API client: :class:`Client`, one attribute per resource of both APIs.

This file is the one written by hand; ``_async.py`` (:class:`AsyncClient`) is
generated from it by ``scripts/generate.py`` (the same code with ``async``/
``await``), so the two cannot drift apart. Hence a few habits here: every
request goes through ``_send``/``_json``/``_stream``, generators loop with
``for`` rather than ``yield from``, and a method that does no I/O ends its
``def`` line with ``# no-io`` so it stays a plain method in the async twin.

Every method that calls the API names its operation with :func:`operation`;
a test checks them against ``sdk/openapi.json``.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Union
from urllib.parse import quote

import httpx

from ._common import (
    JOB_FINAL,
    LogLine,
    ServerEvent,
    SSEDecoder,
    StreamEvent,
    backoff,
    operation,
    pack_directory,
    resolve_settings,
    stream_event,
)
from ._errors import APIConnectionError, HangarError, error_class, error_for, job_error

if TYPE_CHECKING:
    import os

    from . import _models as models

__all__ = ["Client", "Job", "ExecResult"]

USER_AGENT = "hangar-sdk-python/0.1.0"

#: Times a broken follow (logs, a build's log) is resumed in a row before giving up.
FOLLOW_RETRIES = 5


def _q(value: str) -> str:  # no-io
    """A path segment, escaped."""
    return quote(str(value), safe="")


def _params(**values: Any) -> Dict[str, Any]:  # no-io
    """Query parameters that were given (booleans as the server spells them)."""
    out: Dict[str, Any] = {}
    for k, v in values.items():
        if v is None:
            continue
        out[k] = ("true" if v else "false") if isinstance(v, bool) else v
    return out


class ExecResult:
    """What a command run in an instance printed, and how it exited."""

    def __init__(self, output: str, exit_code: Optional[int]) -> None:  # no-io
        self.output = output
        #: The command's exit status (``X-Exit-Code``); ``None`` if the server sent none.
        self.exit_code = exit_code

    def __repr__(self) -> str:  # no-io
        return f"ExecResult(exit_code={self.exit_code!r}, output={self.output!r})"


class Job:
    """An async invocation (``POST /v1/agents/{id}/invoke`` with ``"async": true``).

    ``data`` is the job as last read; :meth:`refresh`, :meth:`wait` and
    :meth:`cancel` read it again.
    """

    def __init__(self, client: "Client", data: Dict[str, Any]) -> None:  # no-io
        self._client = client
        self.data: Dict[str, Any] = dict(data)

    @property
    def id(self) -> str:
        return str(self.data.get("id") or self.data.get("job_id"))

    @property
    def status(self) -> str:
        """``pending``, ``running``, ``completed``, ``failed`` or ``cancelled``."""
        return str(self.data.get("status", "")).lower()

    @property
    def done(self) -> bool:
        return self.status in JOB_FINAL

    @property
    def output(self) -> Any:
        return self.data.get("output")

    @property
    def usage(self) -> Any:
        return self.data.get("usage")

    @property
    def error(self) -> Optional[Dict[str, Any]]:
        return self.data.get("error")

    def __repr__(self) -> str:  # no-io
        return f"Job(id={self.id!r}, status={self.status!r})"

    def refresh(self) -> "Job":
        """Reads the job again."""
        self.data = self._client._json("GET", f"/v1/jobs/{_q(self.id)}")
        return self

    def cancel(self) -> "Job":
        """Cancels the job (a finished one answers ``JOB_*`` 409, a
        :class:`~hangar.JobConflictError`)."""
        self.data = self._client._json("POST", f"/v1/jobs/{_q(self.id)}/cancel")
        return self

    def wait(self, timeout: Optional[float] = None, *, raise_on_failure: bool = True) -> "Job":
        """Polls the job, with backoff, until it ends; returns it then.

        A job that ended ``failed`` or ``cancelled`` raises
        :class:`~hangar.JobFailedError` (also an instance of the class of its
        stored code), unless ``raise_on_failure=False``. Past ``timeout``
        seconds, raises :class:`TimeoutError` (the job goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delays = backoff()
        while not self.done:
            delay = next(delays)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
                delay = min(delay, left)
            time.sleep(delay)
            self.refresh()
        if raise_on_failure and self.status != "completed":
            raise job_error(self.data)
        return self


class _Resource:
    def __init__(self, client: "Client") -> None:  # no-io
        self._client = client


class Agents(_Resource):
    """``/v1/agents``: agents, their invocations, logs and metrics."""

    @operation("GET", "/v1/agents")
    def list(self, *, cloud_id: Optional[str] = None, limit: Optional[int] = None) -> Iterator[models.AgentObject]:
        """Every agent (pages are fetched as the iteration goes)."""
        for item in self._client._paginate("/v1/agents", _params(cloud_id=cloud_id, limit=limit)):
            yield item

    @operation("POST", "/v1/agents")
    def create(self, name: str, source: Dict[str, Any], *, cloud_id: str = "local", **fields: Any) -> models.AgentObject:
        """Creates an agent and queues its first build; ``fields`` are the rest of
        ``CreateAgent`` (``config``, ``scaling``, ``environment``…)."""
        body = {"name": name, "cloud_id": cloud_id, "source": source, **fields}
        return self._client._json("POST", "/v1/agents", json=body)

    @operation("GET", "/v1/agents/{id}")
    def get(self, id: str) -> models.AgentObject:
        return self._client._json("GET", f"/v1/agents/{_q(id)}")

    @operation("PATCH", "/v1/agents/{id}")
    def update(self, id: str, **fields: Any) -> models.AgentObject:
        """Changes the fields given (``UpdateAgent``)."""
        return self._client._json("PATCH", f"/v1/agents/{_q(id)}", json=fields)

    @operation("DELETE", "/v1/agents/{id}")
    def delete(self, id: str) -> models.Deleted:
        return self._client._json("DELETE", f"/v1/agents/{_q(id)}")

    @operation("POST", "/v1/agents/{id}/start")
    def start(self, id: str) -> models.AgentObject:
        return self._client._json("POST", f"/v1/agents/{_q(id)}/start")

    @operation("POST", "/v1/agents/{id}/stop")
    def stop(self, id: str) -> models.AgentObject:
        return self._client._json("POST", f"/v1/agents/{_q(id)}/stop")

    @operation("POST", "/v1/agents/{id}/redeploy")
    def redeploy(self, id: str, source: Optional[Dict[str, Any]] = None) -> models.AgentObject:
        """Builds the agent again (from ``source`` when given: it becomes the agent's)."""
        body = {"source": source} if source is not None else {}
        return self._client._json("POST", f"/v1/agents/{_q(id)}/redeploy", json=body)

    @operation("POST", "/v1/agents/{id}/invoke")
    def invoke(self, id: str, input: Any = None, *, stream: bool = False, wait: Optional[bool] = None,
               timeout: Optional[float] = None, headers: Optional[Dict[str, str]] = None,
               idempotency_key: Optional[str] = None) -> Any:
        """Invokes an agent.

        - by default, synchronously: ``{"output", "usage"}``;
        - ``stream=True``: an iterator of :class:`StreamStart`, :class:`StreamChunk`
          and :class:`StreamDone` (an ``error`` event raises its typed error);
        - ``wait=False``: queues a job and returns its :class:`Job` at once;
        - ``wait=True``: queues a job and polls it with backoff until it ends,
          returns the finished :class:`Job` (``.output``), or raises
          :class:`~hangar.JobFailedError`.

        ``timeout`` is the agent's time to answer (``options.timeout``, seconds);
        ``idempotency_key`` makes a repeat answer from the first request's job.
        """
        if stream:
            if wait is not None:
                raise ValueError("stream=True cannot be combined with wait=")
            return self.stream(id, input, timeout=timeout, headers=headers)
        body = self._invoke_body(input, timeout, headers)
        if wait is not None:
            body["async"] = True
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        # The agent may take up to options.timeout (default 300 s) to answer.
        read = (timeout or 300.0) + 30.0
        answer = self._client._json("POST", f"/v1/agents/{_q(id)}/invoke", json=body, headers=extra,
                                    timeout=read, envelope=True)
        if wait is None:
            return answer["data"]
        job = Job(self._client, answer["data"])
        if wait:
            job.wait()
        return job

    def _invoke_body(self, input: Any, timeout: Optional[float], headers: Optional[Dict[str, str]]) -> Dict[str, Any]:  # no-io
        body: Dict[str, Any] = {"input": {} if input is None else input}
        options: Dict[str, Any] = {}
        if timeout is not None:
            options["timeout"] = timeout
        if headers:
            options["headers"] = headers
        if options:
            body["options"] = options
        return body

    @operation("POST", "/v1/agents/{id}/invoke")
    def stream(self, id: str, input: Any = None, *, timeout: Optional[float] = None,
               headers: Optional[Dict[str, str]] = None) -> Iterator[StreamEvent]:
        """A streaming invoke: ``start``, then ``chunk`` s, then ``done``."""
        body = self._invoke_body(input, timeout, headers)
        with self._client._stream("POST", f"/v1/agents/{_q(id)}/invoke", json=body,
                                  headers={"Accept": "text/event-stream"}) as response:
            decoder = SSEDecoder()
            for line in response.iter_lines():
                event = decoder.feed(line)
                if event is None:
                    continue
                typed = stream_event(event)
                if isinstance(typed, dict):
                    code = str(typed.get("code", "STREAM_ERROR"))
                    raise error_class(code, None)(str(typed.get("message", "")), code=code, body=typed)
                if typed is None:
                    continue
                yield typed
                if typed.type == "done":
                    return

    @operation("GET", "/v1/agents/{id}/logs")
    def logs(self, id: str, *, tail: Optional[int] = None, since: Optional[str] = None,
             until: Optional[str] = None, level: Optional[str] = None) -> List[LogLine]:
        """The agent's recent log lines (its default instance's)."""
        params = _params(tail=tail, since=since, until=until, level=level)
        lines = self._client._json("GET", f"/v1/agents/{_q(id)}/logs", params=params)
        return [LogLine(id=None, timestamp=l.get("timestamp", ""), level=l.get("level", ""),
                        message=l.get("message", ""), stream=l.get("stream"),
                        replica_id=l.get("replica_id")) for l in lines]

    @operation("GET", "/v1/agents/{id}/logs")
    def follow_logs(self, id: str, *, last_event_id: Optional[str] = None, level: Optional[str] = None,
                    tail: Optional[int] = None, access_token: Optional[str] = None) -> Iterator[LogLine]:
        """Follows the agent's log: recent lines, then live ones, for as long as the
        iteration goes on. A broken stream is resumed after the last line seen
        (``Last-Event-ID``); pass ``last_event_id`` (a :class:`LogLine`'s ``id``)
        to resume an earlier follow."""
        params = _params(follow=True, level=level, tail=tail, access_token=access_token)
        for line in self._client._follow(f"/v1/agents/{_q(id)}/logs", params, last_event_id):
            yield line

    @operation("GET", "/v1/agents/{id}/metrics")
    def metrics(self, id: str, *, window: Optional[str] = None, step: Optional[str] = None) -> models.AgentMetrics:
        """Metrics over ``window`` (``1h``, ``24h`` or ``7d``), with their
        ``series`` in steps of ``step`` (``60``, ``5m``…)."""
        return self._client._json("GET", f"/v1/agents/{_q(id)}/metrics",
                                  params=_params(window=window, step=step))


class Instances(_Resource):
    """The Instances API (served at the root): instances of an agent's build."""

    @operation("GET", "/v1/instances/{id}/metrics")
    def metrics(self, id: str, *, window: Optional[str] = None,
                step: Optional[str] = None) -> models.InstanceMetricHistory:
        """An instance's metric history over ``window`` in steps of ``step``."""
        return self._client._json("GET", f"/v1/instances/{_q(id)}/metrics",
                                  params=_params(window=window, step=step))

    @operation("POST", "/instances")
    def create(self, name: str, agent_id: str, build_id: str, *, organization_id: Optional[str] = None,
               **fields: Any) -> models.InstanceObject:
        body = {"name": name, "agent_id": agent_id, "build_id": build_id,
                "organization_id": organization_id or self._client.organization_id(), **fields}
        return self._client._json("POST", "/instances", json=body)

    @operation("GET", "/instances/by_org_id/{org_id}")
    def list(self, *, status: Optional[str] = None, agent_id: Optional[str] = None,
             user_id: Optional[str] = None, limit: Optional[int] = None,
             org_id: Optional[str] = None) -> Iterator[models.InstanceObject]:
        org = org_id or self._client.organization_id()
        params = _params(status=status, agent_id=agent_id, user_id=user_id, limit=limit)
        for item in self._client._paginate(f"/instances/by_org_id/{_q(org)}", params):
            yield item

    @operation("GET", "/instances/status/{org_id}/{instance_id}")
    def status(self, id: str, *, org_id: Optional[str] = None) -> models.InstanceStatusObject:
        org = org_id or self._client.organization_id()
        return self._client._json("GET", f"/instances/status/{_q(org)}/{_q(id)}")

    @operation("GET", "/instances/{instance_id}")
    def get(self, id: str) -> models.InstanceObject:
        return self._client._json("GET", f"/instances/{_q(id)}")

    @operation("PUT", "/instances/{instance_id}")
    def update(self, id: str, **fields: Any) -> models.InstanceObject:
        """Changes the fields given (``UpdateInstance``)."""
        return self._client._json("PUT", f"/instances/{_q(id)}", json=fields)

    @operation("DELETE", "/instances/{instance_id}")
    def delete(self, id: str, *, force: bool = False) -> None:
        self._client._send("DELETE", f"/instances/{_q(id)}", params=_params(force=force))

    @operation("POST", "/instances/{org_id}/{instance_id}/exec")
    def exec(self, id: str, argv: Sequence[str], *, org_id: Optional[str] = None,
             timeout: float = 120.0) -> ExecResult:
        """Runs ``argv`` in a replica; its output and exit code."""
        org = org_id or self._client.organization_id()
        response = self._client._send("POST", f"/instances/{_q(org)}/{_q(id)}/exec", json=list(argv),
                                      timeout=timeout)
        code = response.headers.get("x-exit-code")
        return ExecResult(response.text, int(code) if code is not None and code.lstrip("-").isdigit() else None)

    @operation("POST", "/instances/{org_id}/{instance_id}/stdin")
    def stdin(self, id: str, input: str, *, org_id: Optional[str] = None) -> str:
        """Writes ``input`` to a replica's stdin; what it answered."""
        org = org_id or self._client.organization_id()
        response = self._client._send("POST", f"/instances/{_q(org)}/{_q(id)}/stdin", json={"input": input})
        return response.text

    @operation("GET", "/instances/{org_id}/{instance_id}/logs")
    def logs(self, id: str, *, lines: Optional[int] = None, since: Optional[str] = None,
             org_id: Optional[str] = None) -> List[LogLine]:
        org = org_id or self._client.organization_id()
        answer = self._client._json("GET", f"/instances/{_q(org)}/{_q(id)}/logs",
                                    params=_params(lines=lines, since=since))
        return [LogLine(id=None, timestamp=l.get("timestamp", ""), level=l.get("level", ""),
                        message=l.get("message", ""), stream=l.get("stream"),
                        replica_id=l.get("replica_id")) for l in answer.get("logs", [])]

    @operation("GET", "/instances/{org_id}/{instance_id}/logs")
    def follow_logs(self, id: str, *, last_event_id: Optional[str] = None, lines: Optional[int] = None,
                    org_id: Optional[str] = None, access_token: Optional[str] = None) -> Iterator[LogLine]:
        """Follows the instance's log (see :meth:`Agents.follow_logs`)."""
        org = org_id or self._client.organization_id()
        params = _params(follow=True, lines=lines, access_token=access_token)
        for line in self._client._follow(f"/instances/{_q(org)}/{_q(id)}/logs", params, last_event_id):
            yield line


class Builds(_Resource):
    """Builds of agents, and their logs."""

    @operation("GET", "/v1/agents/{id}/builds")
    def list(self, agent_id: str, *, limit: Optional[int] = None) -> Iterator[models.BuildObject]:
        for item in self._client._paginate(f"/v1/agents/{_q(agent_id)}/builds", _params(limit=limit)):
            yield item

    @operation("GET", "/v1/builds/{id}")
    def get(self, id: str) -> models.BuildObject:
        return self._client._json("GET", f"/v1/builds/{_q(id)}")

    @operation("GET", "/v1/builds/{id}/logs")
    def logs(self, id: str, *, after: Optional[int] = None, limit: Optional[int] = None) -> models.BuildLog:
        return self._client._json("GET", f"/v1/builds/{_q(id)}/logs", params=_params(after=after, limit=limit))

    @operation("GET", "/v1/builds/{id}/logs")
    def follow_logs(self, id: str) -> Iterator[ServerEvent]:
        """The build's log as it is written, until the build ends: events whose
        ``json()`` is a line (``seq``, ``message``…), then one ``done`` event
        carrying the build's ``status`` (and ``reason``). Resumed after the last
        line if the stream breaks."""
        last: Optional[str] = None
        retries = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                with self._client._stream("GET", f"/v1/builds/{_q(id)}/logs", params=_params(follow=True),
                                          headers=headers) as response:
                    decoder = SSEDecoder()
                    for text in response.iter_lines():
                        event = decoder.feed(text)
                        if event is None:
                            continue
                        retries = 0
                        if event.id is not None:
                            last = event.id
                        yield event
                        if event.event == "done":
                            return
            except APIConnectionError:
                retries += 1
                if retries > FOLLOW_RETRIES:
                    raise
                time.sleep(min(0.25 * 2 ** retries, 5.0))
                continue
            retries += 1
            if retries > FOLLOW_RETRIES:
                raise APIConnectionError(f"the log of build {id} kept ending before the build did")


class Jobs(_Resource):
    """Async invocations."""

    @operation("GET", "/v1/jobs")
    def list(self, *, agent_id: Optional[str] = None, status: Optional[str] = None,
             limit: Optional[int] = None) -> Iterator[Job]:
        """The organization's jobs, newest first (of one agent, in one status)."""
        params = _params(agent_id=agent_id, status=status, limit=limit)
        for item in self._client._paginate("/v1/jobs", params):
            yield Job(self._client, item)

    @operation("GET", "/v1/jobs/{id}")
    def get(self, id: str) -> Job:
        return Job(self._client, self._client._json("GET", f"/v1/jobs/{_q(id)}"))

    @operation("POST", "/v1/jobs/{id}/cancel")
    def cancel(self, id: str) -> Job:
        return Job(self._client, self._client._json("POST", f"/v1/jobs/{_q(id)}/cancel"))


class Uploads(_Resource):
    """Archives for agents whose source is an upload."""

    @operation("POST", "/v1/uploads")
    def create(self, filename: Optional[str] = None) -> models.UploadObject:
        """An upload slot: ``upload_url`` takes a ``PUT`` of the archive."""
        return self._client._json("POST", "/v1/uploads", json=_params(filename=filename))

    @operation("PUT", "/v1/uploads/{id}/content")
    def put_content(self, upload_url: str, archive: bytes) -> models.UploadReceived:
        """Sends the archive to an upload's signed ``upload_url``."""
        return self._client._json("PUT", upload_url, content=archive,
                                  headers={"Content-Type": "application/gzip"}, timeout=600.0)

    def upload(self, archive: bytes, filename: Optional[str] = None) -> models.UploadObject:
        """Creates an upload and sends ``archive`` to it; the upload (its
        ``upload_url`` is the ``archive_url`` of an ``upload`` source)."""
        slot = self.create(filename)
        self.put_content(slot["upload_url"], archive)
        return slot


class Secrets(_Resource):
    """Encrypted values referenced as ``${secrets.NAME}``."""

    @operation("GET", "/v1/secrets")
    def list(self) -> List[models.SecretObject]:
        return self._client._json("GET", "/v1/secrets")

    @operation("POST", "/v1/secrets")
    def put(self, name: str, value: str) -> models.SecretObject:
        """Creates the secret, or changes its value."""
        return self._client._json("POST", "/v1/secrets", json={"name": name, "value": value})

    @operation("DELETE", "/v1/secrets/{name}")
    def delete(self, name: str) -> models.Deleted:
        return self._client._json("DELETE", f"/v1/secrets/{_q(name)}")


class Webhooks(_Resource):
    """Webhook endpoints, their deliveries and redeliveries."""

    @operation("GET", "/v1/webhooks")
    def list(self) -> List[models.WebhookObject]:
        return self._client._json("GET", "/v1/webhooks")

    @operation("POST", "/v1/webhooks")
    def create(self, url: str, *, events: Optional[List[str]] = None, description: Optional[str] = None,
               secret: Optional[str] = None) -> models.WebhookObject:
        body = _params(url=url, events=events, description=description, secret=secret)
        return self._client._json("POST", "/v1/webhooks", json=body)

    @operation("GET", "/v1/webhooks/{id}")
    def get(self, id: str) -> models.WebhookObject:
        return self._client._json("GET", f"/v1/webhooks/{_q(id)}")

    @operation("PATCH", "/v1/webhooks/{id}")
    def update(self, id: str, **fields: Any) -> models.WebhookObject:
        """Changes the fields given (``url``, ``events``, ``description``, ``enabled``)."""
        return self._client._json("PATCH", f"/v1/webhooks/{_q(id)}", json=fields)

    @operation("DELETE", "/v1/webhooks/{id}")
    def delete(self, id: str) -> models.Deleted:
        return self._client._json("DELETE", f"/v1/webhooks/{_q(id)}")

    @operation("GET", "/v1/webhooks/{id}/deliveries")
    def deliveries(self, id: str, *, limit: Optional[int] = None) -> Iterator[models.DeliveryObject]:
        for item in self._client._paginate(f"/v1/webhooks/{_q(id)}/deliveries", _params(limit=limit)):
            yield item

    @operation("POST", "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver")
    def redeliver(self, id: str, delivery_id: str) -> models.DeliveryObject:
        return self._client._json("POST", f"/v1/webhooks/{_q(id)}/deliveries/{_q(delivery_id)}/redeliver")


class ApiKeys(_Resource):
    """API keys (a key's secret is only in what :meth:`create` returns)."""

    @operation("GET", "/v1/api_keys")
    def list(self) -> List[models.ApiKeyObject]:
        return self._client._json("GET", "/v1/api_keys")

    @operation("POST", "/v1/api_keys")
    def create(self, name: str, *, user_id: Optional[str] = None) -> models.ApiKeyObject:
        return self._client._json("POST", "/v1/api_keys", json=_params(name=name, user_id=user_id))

    @operation("DELETE", "/v1/api_keys/{id}")
    def revoke(self, id: str) -> models.ApiKeyObject:
        return self._client._json("DELETE", f"/v1/api_keys/{_q(id)}")


class Organizations(_Resource):
    """Organizations (creating one is for the platform's operators)."""

    @operation("GET", "/v1/organizations")
    def list(self) -> List[models.OrganizationObject]:
        return self._client._json("GET", "/v1/organizations")

    @operation("POST", "/v1/organizations")
    def create(self, name: str, admin_email: str, *, max_instances: Optional[int] = None) -> models.CreatedOrganization:
        """A new organization, its admin user and the admin's first API key."""
        body = _params(name=name, admin_email=admin_email, max_instances=max_instances)
        return self._client._json("POST", "/v1/organizations", json=body)

    @operation("GET", "/v1/organizations/{id}")
    def get(self, id: str) -> models.OrganizationObject:
        return self._client._json("GET", f"/v1/organizations/{_q(id)}")

    @operation("PATCH", "/v1/organizations/{id}")
    def update(self, id: str, **fields: Any) -> models.OrganizationObject:
        return self._client._json("PATCH", f"/v1/organizations/{_q(id)}", json=fields)


class Users(_Resource):
    """Users of the caller's organization."""

    @operation("GET", "/v1/users")
    def list(self) -> List[models.UserObject]:
        return self._client._json("GET", "/v1/users")

    @operation("POST", "/v1/users")
    def create(self, email: str, *, name: Optional[str] = None, role: Optional[str] = None) -> models.UserObject:
        return self._client._json("POST", "/v1/users", json=_params(email=email, name=name, role=role))

    @operation("GET", "/v1/users/{id}")
    def get(self, id: str) -> models.UserObject:
        return self._client._json("GET", f"/v1/users/{_q(id)}")


class Clouds(_Resource):
    """Where agents run (``local``, docker, kubernetes)."""

    @operation("GET", "/v1/clouds")
    def list(self) -> List[models.CloudObject]:
        return self._client._json("GET", "/v1/clouds")

    @operation("POST", "/v1/clouds")
    def create(self, name: str, driver: str, **fields: Any) -> models.CloudObject:
        return self._client._json("POST", "/v1/clouds", json={"name": name, "driver": driver, **fields})

    @operation("GET", "/v1/clouds/{id}")
    def get(self, id: str) -> models.CloudObject:
        return self._client._json("GET", f"/v1/clouds/{_q(id)}")


class Nodes(_Resource):
    """The servers sharing this database (for operators)."""

    @operation("GET", "/v1/nodes")
    def list(self) -> List[models.NodeObject]:
        return self._client._json("GET", "/v1/nodes")

    @operation("POST", "/v1/nodes/{id}/drain")
    def drain(self, id: str) -> models.NodeObject:
        return self._client._json("POST", f"/v1/nodes/{_q(id)}/drain")

    @operation("DELETE", "/v1/nodes/{id}/drain")
    def undrain(self, id: str) -> models.NodeObject:
        return self._client._json("DELETE", f"/v1/nodes/{_q(id)}/drain")


class Sessions(_Resource):
    """Sticky sessions: every invocation naming one goes to one replica while it lives.
    Name it with ``agents.invoke(id, input, headers={"X-Hangar-Session": session})``."""

    @operation("GET", "/v1/agents/{id}/sessions")
    def list(self, agent_id: str) -> List[models.SessionObject]:
        return self._client._json("GET", f"/v1/agents/{_q(agent_id)}/sessions")

    @operation("GET", "/v1/sessions/{id}")
    def get(self, id: str) -> models.SessionObject:
        return self._client._json("GET", f"/v1/sessions/{_q(id)}")

    @operation("DELETE", "/v1/sessions/{id}")
    def delete(self, id: str, *, kill: bool = False) -> models.SessionEnded:
        """Ends a session; ``kill=True`` also stops its replica (another takes its place)."""
        params = _params(kill=True) if kill else None
        return self._client._json("DELETE", f"/v1/sessions/{_q(id)}", params=params)


class Events(_Resource):
    """What happened in the organization, newest first."""

    @operation("GET", "/v1/events")
    def list(self, *, type: Optional[str] = None, limit: Optional[int] = None) -> Iterator[models.EventObject]:
        for item in self._client._paginate("/v1/events", _params(type=type, limit=limit)):
            yield item


class Tokens(_Resource):
    """Stream tokens: short-lived read access to one object's streams, for a browser's ``EventSource``."""

    @operation("POST", "/v1/tokens")
    def create(self, *, agent_id: Optional[str] = None, instance_id: Optional[str] = None,
               build_id: Optional[str] = None, ttl_seconds: Optional[int] = None) -> models.TokenObject:
        body = _params(agent_id=agent_id, instance_id=instance_id, build_id=build_id, ttl_seconds=ttl_seconds)
        return self._client._json("POST", "/v1/tokens", json=body)


class Client:
    """Hangar's API.

    ``base_url`` and ``api_key`` default to ``HANGAR_URL`` and ``HANGAR_KEY``,
    then to what ``hangar login`` saved (``~/.config/hangar/config.toml``).
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None, *,
                 timeout: float = 60.0, http_client: Optional[httpx.Client] = None) -> None:  # no-io
        self.base_url, self.api_key = resolve_settings(base_url, api_key)
        self._http = http_client or httpx.Client(timeout=timeout)
        self._timeout = timeout
        self._headers = {"Authorization": f"Bearer {self.api_key}", "User-Agent": USER_AGENT}
        self._org: Optional[str] = None
        self.agents = Agents(self)
        self.instances = Instances(self)
        self.builds = Builds(self)
        self.jobs = Jobs(self)
        self.uploads = Uploads(self)
        self.secrets = Secrets(self)
        self.webhooks = Webhooks(self)
        self.api_keys = ApiKeys(self)
        self.organizations = Organizations(self)
        self.users = Users(self)
        self.clouds = Clouds(self)
        self.nodes = Nodes(self)
        self.sessions = Sessions(self)
        self.events = Events(self)
        self.tokens = Tokens(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @operation("GET", "/v1/me")
    def me(self) -> models.Me:
        """Who the API key acts as."""
        me = self._json("GET", "/v1/me")
        self._org = me.get("organization_id")
        return me

    def organization_id(self) -> str:
        """The key's organization (read once; the Instances API names it in paths)."""
        if self._org is None:
            self.me()
        return str(self._org)

    @operation("GET", "/metrics")
    def scrape_metrics(self) -> str:
        """The server's Prometheus metrics, as text (operators' keys only)."""
        response = self._send("GET", "/metrics")
        return response.text

    def deploy(self, path: Union[str, "os.PathLike[str]"], name: Optional[str] = None, *,
               cloud_id: str = "local", timeout: float = 300.0, **fields: Any) -> models.AgentObject:
        """Deploys a directory as ``hangar deploy`` does: packs it (honouring
        ``.gitignore``/``.ignore``/``.hangarignore``), uploads it, creates the
        agent — or, when the cloud has one of that name, redeploys it from the
        new archive — waits for the build, then until the agent runs that build.
        ``fields`` (``config``, ``scaling``, ``environment``…) go with the
        agent's creation, or are changed before the redeploy.
        Returns the agent. A failed build raises :class:`HangarError` with code
        ``BUILD_FAILED``; past ``timeout`` seconds, :class:`TimeoutError`."""
        import os

        directory = os.fspath(path)
        name = name or os.path.basename(os.path.abspath(directory))
        archive, files = pack_directory(directory)
        if not files:
            raise ValueError(f"{directory}: no files to deploy (all ignored?)")
        slot = self.uploads.upload(archive, f"{name}.tar.gz")
        source = {"type": "upload", "archive_url": slot["upload_url"]}
        existing = None
        for agent in self.agents.list(cloud_id=cloud_id):
            if agent["name"] == name:
                existing = agent
                break
        if existing is not None:
            if fields:
                self.agents.update(existing["id"], **fields)
            agent = self.agents.redeploy(existing["id"], source)
        else:
            agent = self.agents.create(name, source, cloud_id=cloud_id, **fields)
        build = agent.get("latest_build_id")
        if not build:
            for found in self.builds.list(agent["id"], limit=1):
                build = found["id"]
                break
        if not build:
            raise HangarError("the agent has no build", code="BUILD_NOT_FOUND")
        done: Dict[str, Any] = {}
        for event in self.builds.follow_logs(build):
            if event.event == "done":
                done = event.json()
        if done.get("status") != "ready":
            raise HangarError(f"build {build} {done.get('status', 'failed')}: "
                              f"{done.get('reason') or 'no reason given'}", code="BUILD_FAILED",
                              body={"build_id": build, **done})
        deadline = time.monotonic() + timeout
        delays = backoff(0.2, 1.5, 2.0)
        while True:
            agent = self.agents.get(agent["id"])
            if agent.get("latest_build_id") != build:
                raise HangarError(f"another build ({agent.get('latest_build_id')}) of the agent was queued meanwhile",
                                  code="BUILD_SUPERSEDED")
            # Compared lower-case: the server sends `running`.
            status = str(agent.get("status", "")).lower()
            if status == "running" and self._deployed(agent["id"], build):
                return agent
            if status in ("failed", "stopped"):
                raise HangarError(f"build {build} is ready but the agent is {agent.get('status')}",
                                  code="AGENT_NOT_RUNNING", body={"current_status": agent.get("status")})
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the agent did not run build {build} within {timeout} s")
            time.sleep(next(delays))

    def _deployed(self, agent_id: str, build: str) -> bool:
        """Whether the organization's recent events say the agent runs ``build``
        (the newest hundred: the deploy being waited for is among them)."""
        seen = 0
        for event in self.events.list(type="agent.deployed", limit=100):
            data = event.get("data") or {}
            if data.get("agent_id") == agent_id and data.get("build_id") == build:
                return True
            seen += 1
            if seen >= 100:
                break
        return False

    # -- transport -------------------------------------------------------------

    def _url(self, path: str) -> str:  # no-io
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def _send(self, method: str, path: str, *, params: Optional[Dict[str, Any]] = None, json: Any = None,
              content: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None,
              timeout: Optional[float] = None) -> httpx.Response:
        """Sends a request; an error answer raises its typed :class:`HangarError`."""
        try:
            response = self._http.request(method, self._url(path), params=params, json=json, content=content,
                                          headers={**self._headers, **(headers or {})},
                                          timeout=timeout or self._timeout)
        except httpx.TransportError as e:
            raise APIConnectionError(f"cannot reach {self.base_url}: {e}") from e
        if response.is_error:
            raise self._error(response)
        return response

    def _error(self, response: httpx.Response) -> HangarError:  # no-io
        try:
            payload = response.json()
        except ValueError:
            payload = None
        return error_for(response.status_code, payload, response.text)

    def _json(self, method: str, path: str, *, envelope: bool = False, **kwargs: Any) -> Any:
        """A JSON answer; ``/v1``'s ``{success, data, meta}`` is unwrapped to ``data``
        unless ``envelope`` (the Instances API's answers have none)."""
        response = self._send(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise HangarError(f"{method} {path} answered something else than JSON: {response.text[:200]}",
                              code="BAD_RESPONSE", status=response.status_code) from None
        if not envelope and isinstance(body, dict) and "success" in body and "data" in body:
            return body["data"]
        return body

    @contextlib.contextmanager
    def _stream(self, method: str, path: str, *, params: Optional[Dict[str, Any]] = None, json: Any = None,
                headers: Optional[Dict[str, str]] = None) -> Iterator[httpx.Response]:
        """A streamed answer (SSE): no read timeout, since a stream may idle
        between events (the server sends a comment every 15 s)."""
        timeout = httpx.Timeout(self._timeout, read=None)
        try:
            with self._http.stream(method, self._url(path), params=params, json=json,
                                   headers={**self._headers, **(headers or {})}, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    raise self._error(response)
                yield response
        except httpx.TransportError as e:
            raise APIConnectionError(f"the stream from {self.base_url} broke: {e}") from e

    def _paginate(self, path: str, params: Dict[str, Any]) -> Iterator[Any]:
        """Every item of a list, page by page: follows ``pagination.next_cursor``
        while ``pagination.has_more``."""
        params = dict(params)
        while True:
            page = self._json("GET", path, params=params, envelope=True)
            for item in page.get("data") or []:
                yield item
            pagination = page.get("pagination") or {}
            cursor = pagination.get("next_cursor")
            if not pagination.get("has_more") or not cursor:
                return
            params["cursor"] = cursor

    def _follow(self, path: str, params: Dict[str, Any], last_event_id: Optional[str]) -> Iterator[LogLine]:
        """Log lines of a follow (SSE), resumed after the last one seen when the
        stream breaks; ends when the server ends the stream."""
        last = last_event_id
        retries = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                with self._stream("GET", path, params=params, headers=headers) as response:
                    decoder = SSEDecoder()
                    for text in response.iter_lines():
                        event = decoder.feed(text)
                        if event is None:
                            continue
                        retries = 0
                        if event.id is not None:
                            last = event.id
                        yield LogLine.from_event(event)
                return
            except APIConnectionError:
                retries += 1
                if retries > FOLLOW_RETRIES:
                    raise
                time.sleep(min(0.25 * 2 ** retries, 5.0))
