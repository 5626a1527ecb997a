"""The client against the OpenAPI document, and its parts that need no server.

- Drift: regenerating ``_models.py`` (from ``sdk/openapi.json``) and
  ``_async.py`` (from ``_sync.py``) gives the checked-in files; every operation
  of the document has a client method in both clients, and no method names an
  operation the document lacks.
- Settings, the error table, the SSE decoder and the packer's ignore rules.

Run: ``python -m unittest discover -s sdk/python/tests`` (with httpx and
datamodel-code-generator installed; see the SDK's README).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

import httpx

SDK = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SDK))

import hangar  # noqa: E402
from hangar import _common, _errors  # noqa: E402

DOCUMENT = SDK.parent / "openapi.json"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def document_operations() -> dict:
    doc = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    return {f"{m.upper()} {path}": op.get("operationId")
            for path, item in doc["paths"].items() for m, op in item.items() if m in METHODS}


def client_operations(client_class: type) -> dict:
    """``METHOD /path`` → the methods (``agents.invoke``) that declare it."""
    found: dict = {}
    probe = client_class(base_url="http://127.0.0.1:9", api_key="unused")
    owners = [("", type(probe))] + [(name, type(value)) for name, value in vars(probe).items()
                                    if not name.startswith("_") and hasattr(value, "_client")]
    for prefix, cls in owners:
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            op = getattr(fn, "__hangar_operation__", None)
            if op:
                found.setdefault(op, []).append(f"{prefix}.{name}".lstrip("."))
    return found


class Drift(unittest.TestCase):
    def test_generated_files_are_what_the_generator_makes_now(self):
        run = subprocess.run([sys.executable, str(SDK / "scripts" / "generate.py"), "--check"],
                             capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)

    def test_every_operation_of_the_document_has_a_client_method(self):
        want = document_operations()
        self.assertGreater(len(want), 50)
        for client_class in (hangar.Client, hangar.AsyncClient):
            have = client_operations(client_class)
            missing = sorted(f"{op} ({want[op]})" for op in set(want) - set(have))
            self.assertEqual(missing, [], f"{client_class.__name__} has no method for these operations")
            unknown = sorted(f"{op} by {have[op]}" for op in set(have) - set(want))
            self.assertEqual(unknown, [], f"{client_class.__name__} calls operations the document lacks")

    def test_the_async_client_mirrors_the_sync_one(self):
        sync = client_operations(hangar.Client)
        asynchronous = client_operations(hangar.AsyncClient)
        self.assertEqual(sync, asynchronous)
        self.assertTrue(inspect.iscoroutinefunction(hangar.AsyncClient.me))
        self.assertTrue(inspect.isasyncgenfunction(hangar._async.Agents.stream))


class Types(unittest.TestCase):
    def test_the_package_type_checks(self):
        # py.typed promises types: mypy must pass on the oldest Python supported.
        try:
            import mypy  # noqa: F401
        except ImportError:
            if os.environ.get("CI") == "true":
                raise
            self.skipTest("mypy is not installed: pip install mypy==2.4.1")
        run = subprocess.run([sys.executable, "-m", "mypy", "--python-version", "3.10", "--cache-dir", os.devnull,
                              "hangar"], cwd=SDK, capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)


class Settings(unittest.TestCase):
    def test_arguments_beat_the_environment_which_beats_the_login_file(self):
        with tempfile.TemporaryDirectory() as home:
            path = Path(home, ".config", "hangar", "config.toml")
            path.parent.mkdir(parents=True)
            path.write_text('server = "http://file:3/"\nkey = "file-key"\n')
            env = {"HOME": home}
            self.assertEqual(_common.resolve_settings(None, None, env), ("http://file:3", "file-key"))
            env.update(HANGAR_URL="http://env:2", HANGAR_KEY="env-key")
            self.assertEqual(_common.resolve_settings(None, None, env), ("http://env:2", "env-key"))
            self.assertEqual(_common.resolve_settings("http://arg:1", None, env), ("http://arg:1", "env-key"))
            # Each value on its own: the key from the file, the server from the environment.
            self.assertEqual(_common.resolve_settings(None, None, {"HOME": home, "HANGAR_URL": "http://env:2"}),
                             ("http://env:2", "file-key"))
            # XDG_CONFIG_HOME first, when absolute.
            xdg = Path(home, "xdg", "hangar", "config.toml")
            xdg.parent.mkdir(parents=True)
            xdg.write_text('server = "http://xdg:4"\nkey = "xdg-key"\n')
            self.assertEqual(_common.resolve_settings(None, None, {"HOME": home, "XDG_CONFIG_HOME": str(xdg.parent.parent)}),
                             ("http://xdg:4", "xdg-key"))
        with self.assertRaisesRegex(ValueError, "no server"):
            _common.resolve_settings(None, None, {})
        with self.assertRaisesRegex(ValueError, "not a server URL"):
            _common.resolve_settings("localhost:7070", "k", {})


class Errors(unittest.TestCase):
    def test_the_envelope_code_picks_the_class(self):
        cases = [
            (404, "AGENT_NOT_FOUND", hangar.NotFoundError),
            (409, "AGENT_NAME_TAKEN", hangar.NameTakenError),
            (409, "AGENT_NOT_RUNNING", hangar.NotRunningError),
            (409, "JOB_ALREADY_FINISHED", hangar.JobConflictError),
            (429, "RATE_LIMITED", hangar.RateLimitedError),
            (502, "AGENT_ERROR", hangar.AgentError),
            (503, "RUNTIME_UNAVAILABLE", hangar.RuntimeUnavailableError),
            (504, "INVOKE_TIMEOUT", hangar.InvokeTimeoutError),
            (418, "SOMETHING_NEWER", hangar.APIStatusError),
            (503, "SOMETHING_NEWER", hangar.UnavailableError),
        ]
        for status, code, cls in cases:
            err = _errors.error_for(status, {"error": {"code": code, "message": "m", "retry_after_seconds": 2}})
            self.assertIs(type(err), cls, code)
            self.assertEqual((err.code, err.message, err.status), (code, "m", status))
        self.assertEqual(_errors.error_for(429, {"error": {"code": "RATE_LIMITED", "message": "",
                                                            "retry_after_seconds": 2}}).retry_after, 2.0)
        proxy = _errors.error_for(502, None, "<html>bad gateway</html>")
        self.assertIsInstance(proxy, hangar.AgentError)
        self.assertEqual(proxy.code, "HTTP_502")

    def test_a_failed_job_raises_its_codes_class(self):
        err = _errors.job_error({"id": "job_1", "status": "failed",
                                 "error": {"code": "AGENT_ERROR", "message": "boom"}})
        self.assertIsInstance(err, hangar.JobFailedError)
        self.assertIsInstance(err, hangar.AgentError)
        self.assertEqual(err.code, "AGENT_ERROR")
        cancelled = _errors.job_error({"id": "job_1", "status": "cancelled"})
        self.assertEqual(cancelled.code, "JOB_CANCELLED")


class Events(unittest.TestCase):
    def test_sse_is_read_field_by_field(self):
        decoder = _common.SSEDecoder()
        text = ': keep-alive\n\nid: 7\ndata: {"a":1}\n\nevent: done\r\ndata: x\r\ndata:y\r\n\r\n'
        events = [e for e in map(decoder.feed, text.splitlines(keepends=True)) if e]
        self.assertEqual(events, [_common.ServerEvent("message", '{"a":1}', "7"),
                                  _common.ServerEvent("done", "x\ny", None)])

    def test_invoke_events_are_typed(self):
        ev = lambda data: _common.stream_event(_common.ServerEvent("message", json.dumps(data)))
        self.assertEqual(ev({"type": "start", "request_id": "r"}), hangar.StreamStart("r"))
        self.assertEqual(ev({"type": "chunk", "content": "hi"}), hangar.StreamChunk("hi"))
        self.assertEqual(ev({"type": "done", "usage": {"t": 1}}), hangar.StreamDone({"t": 1}))
        self.assertEqual(ev({"type": "error", "error": {"code": "AGENT_ERROR"}}), {"code": "AGENT_ERROR"})


class Packing(unittest.TestCase):
    def test_ignored_files_and_git_stay_out(self):
        with tempfile.TemporaryDirectory() as root:
            def write(rel, text="x"):
                path = Path(root, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            write("main.py", "print('hi')\n")
            write(".gitignore", "secret.txt\n/build/\n*.log\n")
            write("secret.txt")
            write("build/out.bin")
            write("lib/util.py")
            write("lib/debug.log")
            write("lib/.gitignore", "local.txt\n")
            write("lib/local.txt")
            write(".python-version", "3.11\n")
            write(".hangarignore", "docs/\n")
            write("docs/big.md")
            write(".git/HEAD", "ref: refs/heads/main\n")
            os.symlink("main.py", Path(root, "entry.py"))
            archive, files = _common.pack_directory(root)
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                names = tar.getnames()
                self.assertTrue(tar.getmember("entry.py").issym())
            self.assertEqual(names, [".gitignore", ".hangarignore", ".python-version", "entry.py", "lib",
                                     "lib/.gitignore", "lib/util.py", "main.py"])
            self.assertEqual(files, [".gitignore", ".hangarignore", ".python-version", "lib/.gitignore",
                                     "lib/util.py", "main.py"])


class Transport(unittest.TestCase):
    """The client's own logic over a fake transport (the live tests cover the server)."""

    def test_a_broken_follow_resumes_after_the_last_line(self):
        asked = []

        def lines_then_break():
            yield b'id: 4\ndata: {"timestamp": "t", "level": "info", "message": "four"}\n\n'
            raise httpx.ReadError("connection reset")

        def handler(request):
            asked.append(request.headers.get("last-event-id"))
            if len(asked) == 1:
                return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=lines_then_break())
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=b'id: 5\ndata: {"timestamp": "t", "level": "warn", "message": "five"}\n\n')

        client = hangar.Client("http://hangar.test", "k", http_client=httpx.Client(transport=httpx.MockTransport(handler)))
        lines = list(client.agents.follow_logs("agent_1"))
        self.assertEqual([(l.id, l.message) for l in lines], [("4", "four"), ("5", "five")])
        self.assertEqual(asked, [None, "4"])

    def test_the_async_follow_resumes_too(self):
        asked = []

        async def lines_then_break():
            yield b'id: 9\ndata: {"timestamp": "t", "level": "info", "message": "nine"}\n\n'
            raise httpx.ReadError("connection reset")

        async def rest():
            yield b'id: 10\ndata: {"timestamp": "t", "level": "info", "message": "ten"}\n\n'

        def handler(request):
            asked.append(request.headers.get("last-event-id"))
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=lines_then_break() if len(asked) == 1 else rest())

        async def follow():
            client = hangar.AsyncClient("http://hangar.test", "k",
                                        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
            return [line.message async for line in client.instances.follow_logs("inst_1", org_id="org_1",
                                                                                 last_event_id="8")]

        self.assertEqual(asyncio.run(follow()), ["nine", "ten"])
        self.assertEqual(asked, ["8", "9"])

    def test_wait_polls_the_job_until_it_ends(self):
        states = iter(["running", "running", "completed"])
        polls = []

        def handler(request):
            if request.url.path.endswith("/invoke"):
                self.assertEqual(json.loads(request.content)["async"], True)
                return httpx.Response(202, json={"success": True, "data": {"job_id": "job_1", "status": "pending"}})
            polls.append(request.url.path)
            return httpx.Response(200, json={"success": True, "meta": {},
                                             "data": {"id": "job_1", "status": next(states), "output": 42}})

        client = hangar.Client("http://hangar.test", "k", http_client=httpx.Client(transport=httpx.MockTransport(handler)))
        job = client.agents.invoke("agent_1", {}, wait=True)
        self.assertEqual((job.status, job.output), ("completed", 42))
        self.assertEqual(polls, ["/v1/jobs/job_1"] * 3)

    def test_backoff_grows_to_its_ceiling(self):
        delays = _common.backoff(0.1, 2.0, 1.0)
        self.assertEqual([round(next(delays), 2) for _ in range(6)], [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


if __name__ == "__main__":
    unittest.main()
