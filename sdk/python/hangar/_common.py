"""What the sync and async clients share, none of it doing I/O on the network:
settings, the operation table, Server-Sent Events parsing and the typed
events, the directory packer and the job poller's backoff.

Kept apart from ``_sync.py`` so that ``_async.py`` (generated from it) and
the tests import one copy.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar, Union

__all__ = [
    "operation",
    "resolve_settings",
    "ServerEvent",
    "SSEDecoder",
    "StreamStart",
    "StreamChunk",
    "StreamDone",
    "StreamEvent",
    "LogLine",
    "pack_directory",
]

F = TypeVar("F", bound=Callable[..., Any])


def operation(method: str, path: str) -> Callable[[F], F]:
    """Marks a client method as the one calling ``method path`` of the API.

    The drift test walks every resource's methods for these marks and checks
    that each operation of ``sdk/openapi.json`` has one (and that no mark
    names an operation the document lacks). Keyed by method and path rather
    than ``operationId``: those are not unique across the two APIs (both have
    a ``logs``).
    """

    def mark(fn: F) -> F:
        fn.__hangar_operation__ = f"{method.upper()} {path}"  # type: ignore[attr-defined]
        return fn

    return mark


# -- settings ----------------------------------------------------------------


def config_path(env: "os._Environ[str] | Dict[str, str]") -> Optional[Path]:
    """Where ``hangar login`` saves the server and key: ``$XDG_CONFIG_HOME/hangar/config.toml``
    (an absolute one only, as the XDG spec says), else ``~/.config/hangar/config.toml``."""
    xdg = env.get("XDG_CONFIG_HOME") or ""
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "hangar" / "config.toml"
    home = env.get("HOME") or ""
    return Path(home) / ".config" / "hangar" / "config.toml" if home else None


def read_config(path: Optional[Path]) -> Dict[str, str]:
    """The saved ``server`` and ``key``; a missing file is empty."""
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    if sys.version_info >= (3, 11):
        return _read_toml(path, text)
    return _read_simple_toml(text)


if sys.version_info >= (3, 11):

    def _read_toml(path: Path, text: str) -> Dict[str, str]:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: {e}") from None
        return {k: v for k, v in data.items() if isinstance(v, str)}


def _read_simple_toml(text: str) -> Dict[str, str]:
    """The ``key = "value"`` lines ``hangar login`` writes (Python 3.10 has no tomllib)."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        value = value.strip()
        if sep and value.startswith('"') and value.endswith('"'):
            out[name.strip()] = json.loads(value)
    return out


def resolve_settings(base_url: Optional[str], api_key: Optional[str],
                     env: Optional[Dict[str, str]] = None) -> Tuple[str, str]:
    """Each of server and key from the argument, else ``HANGAR_URL``/``HANGAR_KEY``,
    else the file ``hangar login`` wrote — each on its own, like the CLI."""
    env = dict(os.environ) if env is None else env
    server = base_url or env.get("HANGAR_URL") or None
    key = api_key or env.get("HANGAR_KEY") or None
    if not server or not key:
        saved = read_config(config_path(env))
        server = server or saved.get("server") or None
        key = key or saved.get("key") or None
    if not server:
        raise ValueError("no server: pass base_url=, set HANGAR_URL or run `hangar login`")
    if not key:
        raise ValueError("no API key: pass api_key=, set HANGAR_KEY or run `hangar login`")
    server = server.strip().rstrip("/")
    if not (server.startswith("http://") or server.startswith("https://")) or server.endswith("//"):
        raise ValueError(f"{server!r} is not a server URL (http://host:port or https://host)")
    return server, key


# -- Server-Sent Events ------------------------------------------------------


@dataclasses.dataclass
class ServerEvent:
    """One Server-Sent Event: ``event`` is ``message`` when the server names none."""

    event: str
    data: str
    id: Optional[str] = None

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    """Turns lines of an ``text/event-stream`` body into :class:`ServerEvent` s
    (comments — the server's keep-alives — are skipped)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: List[str] = []
        self._id: Optional[str] = None

    def feed(self, line: str) -> Optional[ServerEvent]:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._event, self._id = "", None
                return None
            event = ServerEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            self._id = value
        return None


@dataclasses.dataclass
class StreamStart:
    """A streaming invoke began: the request's id."""

    request_id: Optional[str]
    type: str = "start"


@dataclasses.dataclass
class StreamChunk:
    """A piece of the agent's answer (a string, or any JSON the agent sent)."""

    content: Any
    type: str = "chunk"


@dataclasses.dataclass
class StreamDone:
    """The stream ended; ``usage`` is what the agent reported, if anything."""

    usage: Any
    type: str = "done"


StreamEvent = Union[StreamStart, StreamChunk, StreamDone]


def stream_event(event: ServerEvent) -> Union[StreamEvent, Dict[str, Any], None]:
    """The typed invoke event of an SSE event; an ``error`` event's error object
    as a dict (the caller raises it); ``None`` for what is not an event."""
    if event.data == "[DONE]":
        return None
    payload = event.json()
    kind = payload.get("type") if isinstance(payload, dict) else None
    if kind == "start":
        return StreamStart(request_id=payload.get("request_id"))
    if kind == "chunk":
        return StreamChunk(content=payload.get("content"))
    if kind == "done":
        return StreamDone(usage=payload.get("usage"))
    if kind == "error":
        return dict(payload.get("error") or {})
    return None


@dataclasses.dataclass
class LogLine:
    """A log line of an instance or agent; ``id`` is its place in the log, the
    ``Last-Event-ID`` a follow resumes after."""

    id: Optional[str]
    timestamp: str
    level: str
    message: str
    stream: Optional[str] = None
    replica_id: Optional[str] = None

    @classmethod
    def from_event(cls, event: ServerEvent) -> "LogLine":
        data = event.json()
        return cls(id=event.id, timestamp=data.get("timestamp", ""), level=data.get("level", ""),
                   message=data.get("message", ""), stream=data.get("stream"),
                   replica_id=data.get("replica_id"))


# -- jobs --------------------------------------------------------------------

#: A job's statuses once it ended (compared lower-case).
JOB_FINAL = ("completed", "failed", "cancelled")


def backoff(first: float = 0.1, factor: float = 1.6, most: float = 2.0) -> Iterator[float]:
    """Delays between polls of a job: short at first (most jobs are quick), then
    growing to ``most`` so a long job costs a request every few seconds."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, most)


# -- packing -----------------------------------------------------------------

#: Ignore files read in every directory, as ``hangar deploy`` does.
IGNORE_FILES = (".gitignore", ".ignore", ".hangarignore")


@dataclasses.dataclass
class _Rule:
    base: str  # directory of the ignore file, relative, "" for the root
    pattern: str
    negate: bool
    dir_only: bool
    anchored: bool

    def matches(self, rel: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if self.base:
            if not rel.startswith(self.base + "/"):
                return False
            rel = rel[len(self.base) + 1:]
        if self.anchored:
            return _glob(self.pattern, rel)
        # An unanchored pattern matches the name at any depth.
        parts = rel.split("/")
        return any(_glob(self.pattern, "/".join(parts[i:])) for i in range(len(parts)))


def _glob(pattern: str, path: str) -> bool:
    """gitignore's glob: ``*`` and ``?`` stay within a path segment, ``**`` spans them."""
    regex, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            regex += "/.*"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif c == "*":
            regex += "[^/]*"
            i += 1
        elif c == "?":
            regex += "[^/]"
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                regex += "\\["
                i += 1
            else:
                regex += fnmatch.translate(pattern[i:end + 1])[4:-3]
                i = end + 1
        elif c == "\\" and i + 1 < len(pattern):
            regex += "\\" + pattern[i + 1]
            i += 2
        else:
            regex += "\\" + c if c in ".^$+{}()|" else c
            i += 1
    import re

    return re.fullmatch(regex, path) is not None


def _rules(root: Path, rel_dir: str) -> List[_Rule]:
    rules = []
    for name in IGNORE_FILES:
        try:
            text = (root / rel_dir / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            anchored = "/" in line
            line = line.lstrip("/")
            if line:
                rules.append(_Rule(rel_dir, line, negate, dir_only, anchored))
    return rules


def pack_directory(directory: Union[str, "os.PathLike[str]"]) -> Tuple[bytes, List[str]]:
    """Packs a directory as ``hangar deploy`` does: a ``.tar.gz`` of the files git
    would take (``.gitignore``, ``.ignore`` and ``.hangarignore`` in the directory
    and below), never ``.git/``, hidden files kept, symlinks as links, entries
    sorted so the same tree packs the same. Returns the archive and its files."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ValueError(f"{directory} is not a directory")
    buffer = io.BytesIO()
    files: List[str] = []
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:

        def walk(rel_dir: str, rules: List[_Rule]) -> None:
            rules = rules + _rules(root, rel_dir)
            for entry in sorted(os.scandir(root / rel_dir), key=lambda e: e.name):
                if entry.name == ".git":
                    continue
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
                ignored = False
                for rule in rules:
                    if rule.matches(rel, is_dir):
                        ignored = not rule.negate
                if ignored:
                    continue
                if not (is_dir or is_link or entry.is_file(follow_symlinks=False)):
                    continue  # sockets, FIFOs, devices
                tar.add(entry.path, arcname=rel, recursive=False)
                if is_dir:
                    walk(rel, rules)
                elif not is_link:
                    files.append(rel)

        walk("", [])
    return buffer.getvalue(), files
