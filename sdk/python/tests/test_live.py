"""The sync and async clients against a real ``hangar serve`` (``HANGAR_URL``,
``HANGAR_KEY``: an admin key). ``crates/hangar/tests/sdk_python.rs`` starts
the server and runs these; without ``HANGAR_URL`` they are skipped.

One agent, deployed from a directory with ``client.deploy`` (``tests/agent``
with the helper beside it), serves every test that invokes.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import unittest
from pathlib import Path

SDK = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SDK))

import hangar  # noqa: E402

LIVE = bool(os.environ.get("HANGAR_URL"))
AGENT_NAME = "sdk-py-client"

#: Set by setUpModule: the deployed agent and its instance.
agent: dict = {}


def agent_directory(into: str) -> str:
    """``tests/agent/main.py`` with the helper (``hangar/``) beside it, readable by the sandbox."""
    target = Path(into, "agent")
    shutil.copytree(SDK / "tests" / "agent", target)
    shutil.copytree(SDK / "hangar", target / "hangar", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return str(target)


def setUpModule() -> None:
    if not LIVE:
        raise unittest.SkipTest("HANGAR_URL is not set: run through `cargo test -p hangar --test sdk_python`")
    global _tmp
    _tmp = tempfile.mkdtemp(prefix="hangar-sdk-")
    os.chmod(_tmp, 0o755)
    with hangar.Client() as client:
        deployed = client.deploy(agent_directory(_tmp), name=AGENT_NAME, config={"stdin_enabled": True})
    agent.update(deployed)


def tearDownModule() -> None:
    if LIVE:
        shutil.rmtree(_tmp, ignore_errors=True)


class Sync(unittest.TestCase):
    client: hangar.Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.client = hangar.Client()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()

    def test_deploy_created_a_running_agent_from_the_directory(self):
        got = self.client.agents.get(agent["id"])
        self.assertEqual(got["name"], AGENT_NAME)
        self.assertEqual(got["status"], "running")
        self.assertEqual(got["source"]["type"], "upload")

    def test_invoke_sync(self):
        result = self.client.agents.invoke(agent["id"], {"text": "hello"})
        self.assertEqual(result["output"], {"upper": "HELLO", "length": 5})
        self.assertEqual(result["usage"], {"chars": 5})

    def test_invoke_stream_gives_typed_events(self):
        events = list(self.client.agents.invoke(agent["id"], {"text": "the quick fox"}, stream=True))
        self.assertIsInstance(events[0], hangar.StreamStart)
        self.assertTrue(events[0].request_id)
        self.assertEqual([e.content for e in events if isinstance(e, hangar.StreamChunk)], ["the", "quick", "fox"])
        self.assertEqual(events[-1], hangar.StreamDone(usage={"words": 3}))

    def test_async_job_waited_for(self):
        job = self.client.agents.invoke(agent["id"], {"text": "later"}, wait=True)
        self.assertIsInstance(job, hangar.Job)
        self.assertEqual(job.status, "completed")
        self.assertEqual(job.output, {"upper": "LATER", "length": 5})
        self.assertEqual(self.client.jobs.get(job.id).status, "completed")
        # A repeated Idempotency-Key answers from the first request's job.
        key = f"sdk-{time.time_ns()}"
        first = self.client.agents.invoke(agent["id"], {"text": "once"}, wait=False, idempotency_key=key)
        again = self.client.agents.invoke(agent["id"], {"text": "once"}, wait=True, idempotency_key=key)
        self.assertEqual((again.id, again.output), (first.id, {"upper": "ONCE", "length": 4}))

    def test_async_job_cancelled(self):
        job = self.client.agents.invoke(agent["id"], {"sleep": 60}, wait=False)
        self.assertIn(job.status, ("pending", "running"))
        job.cancel()
        self.assertEqual(job.status, "cancelled")
        with self.assertRaises(hangar.JobFailedError) as caught:
            job.wait()
        self.assertEqual(caught.exception.code, "JOB_CANCELLED")
        # A finished job cannot be cancelled again: its typed 409.
        done = self.client.agents.invoke(agent["id"], {"text": "x"}, wait=True)
        with self.assertRaises(hangar.JobConflictError) as conflict:
            self.client.jobs.cancel(done.id)
        self.assertEqual((conflict.exception.code, conflict.exception.status), ("JOB_ALREADY_FINISHED", 409))
        # Both are listed, newest first; the cancelled one by its status.
        listed = [j.id for j in self.client.jobs.list(agent_id=agent["id"], limit=1)]
        self.assertLess(listed.index(done.id), listed.index(job.id))
        cancelled = [j.id for j in self.client.jobs.list(agent_id=agent["id"], status="cancelled")]
        self.assertIn(job.id, cancelled)
        self.assertNotIn(done.id, cancelled)

    def test_log_follow_resumes_after_the_last_line(self):
        tag = f"sync-{time.time_ns()}"
        self.client.agents.invoke(agent["id"], {"log": 4, "tag": tag})
        seen = []
        for line in self.client.agents.follow_logs(agent["id"], tail=1000):
            if line.message.startswith(tag):
                seen.append(line)
            if line.message == f"{tag} 1":
                break
        self.assertEqual([l.message for l in seen], [f"{tag} 0", f"{tag} 1"])
        self.assertTrue(seen[-1].id)
        # A new follow from the last line seen goes on with the next one.
        resumed = []
        for line in self.client.agents.follow_logs(agent["id"], last_event_id=seen[-1].id):
            resumed.append(line)
            if line.message == f"{tag} 3":
                break
        self.assertEqual([l.message for l in resumed], [f"{tag} 2", f"{tag} 3"])
        self.assertGreater(int(resumed[0].id), int(seen[-1].id))
        # The instance's log, followed through the Instances API, resumes the same way.
        for line in self.client.instances.follow_logs(agent["instance_id"], last_event_id=seen[-1].id):
            self.assertEqual(line.message, f"{tag} 2")
            break

    def test_exec_and_stdin(self):
        ran = self.client.instances.exec(agent["instance_id"], ["sh", "-c", "echo out; exit 3"])
        self.assertEqual((ran.output, ran.exit_code), ("out\n", 3))
        self.assertEqual(self.client.instances.exec(agent["instance_id"], ["true"]).exit_code, 0)
        self.assertIn("olleh", self.client.instances.stdin(agent["instance_id"], "hello\n"))

    def test_pagination_walks_every_page(self):
        every = [e["id"] for e in self.client.events.list(limit=100)]
        self.assertGreater(len(every), 3)
        paged = [e["id"] for e in self.client.events.list(limit=2)]
        # Pages of two cover the same events (and any newer), none twice.
        self.assertLessEqual(set(every), set(paged))
        self.assertEqual(len(paged), len(set(paged)))
        instances = list(self.client.instances.list(limit=1))
        self.assertIn(agent["instance_id"], [i["id"] for i in instances])

    def test_typed_errors_carry_the_envelope(self):
        with self.assertRaises(hangar.NotFoundError) as caught:
            self.client.agents.get("agent_doesnotexist")
        err = caught.exception
        self.assertEqual((err.code, err.status), ("AGENT_NOT_FOUND", 404))
        self.assertTrue(err.message)
        with self.assertRaises(hangar.BadRequestError) as bad:
            self.client.agents.invoke(agent["id"], {"text": "x"}, timeout=0.5)
        self.assertEqual((bad.exception.code, bad.exception.field), ("INVALID_REQUEST", "options.timeout"))
        with hangar.Client(api_key="hgr_wrong") as wrong, self.assertRaises(hangar.AuthenticationError):
            wrong.me()

    def test_secrets_crud(self):
        created = self.client.secrets.put("SDK_PY_TOKEN", "s3cret")
        self.assertEqual((created["name"], created["value"]), ("SDK_PY_TOKEN", "****"))
        self.client.secrets.put("SDK_PY_TOKEN", "changed")
        self.assertIn("SDK_PY_TOKEN", [s["name"] for s in self.client.secrets.list()])
        self.assertEqual(self.client.secrets.delete("SDK_PY_TOKEN")["deleted"], True)
        with self.assertRaises(hangar.NotFoundError) as caught:
            self.client.secrets.delete("SDK_PY_TOKEN")
        self.assertEqual(caught.exception.code, "SECRET_NOT_FOUND")

    def test_webhooks_crud_and_deliveries(self):
        hook = self.client.webhooks.create("https://hooks.example.com/hangar", events=["job.completed"],
                                           description="sdk")
        try:
            self.assertTrue(hook["id"])
            self.assertEqual(self.client.webhooks.get(hook["id"])["description"], "sdk")
            updated = self.client.webhooks.update(hook["id"], description="sdk test")
            self.assertEqual(updated["description"], "sdk test")
            self.assertIn(hook["id"], [h["id"] for h in self.client.webhooks.list()])
            self.client.agents.invoke(agent["id"], {"text": "hook"}, wait=True)
            deadline = time.monotonic() + 30
            deliveries = []
            while not deliveries:
                deliveries = list(self.client.webhooks.deliveries(hook["id"], limit=1))
                self.assertLess(time.monotonic(), deadline, "no delivery")
                time.sleep(0.2)
            self.assertEqual(deliveries[0]["event_type"], "job.completed")
            again = self.client.webhooks.redeliver(hook["id"], deliveries[0]["id"])
            self.assertEqual(again["id"], deliveries[0]["id"])
        finally:
            self.assertTrue(self.client.webhooks.delete(hook["id"])["deleted"])
        with self.assertRaises(hangar.NotFoundError):
            self.client.webhooks.get(hook["id"])

    def test_api_keys_crud(self):
        key = self.client.api_keys.create("sdk-py")
        self.assertTrue(key["key"])
        with hangar.Client(api_key=key["key"]) as other:
            self.assertEqual(other.me()["api_key_id"], key["id"])
        self.assertIn(key["id"], [k["id"] for k in self.client.api_keys.list()])
        self.assertTrue(self.client.api_keys.revoke(key["id"])["revoked_at"])
        with hangar.Client(api_key=key["key"]) as other, self.assertRaises(hangar.AuthenticationError) as caught:
            other.me()
        self.assertEqual((caught.exception.code, caught.exception.status), ("UNAUTHORIZED", 401))

    def test_tenancy_reads_and_stream_tokens(self):
        me = self.client.me()
        self.assertEqual(self.client.organizations.get(me["organization_id"])["id"], me["organization_id"])
        self.assertIn(me["user_id"], [u["id"] for u in self.client.users.list()])
        self.assertIn("local", [c["name"] for c in self.client.clouds.list()])
        token = self.client.tokens.create(agent_id=agent["id"], ttl_seconds=60)
        self.assertEqual(token["object_id"], agent["id"])
        self.assertEqual(self.client.builds.get(agent["latest_build_id"])["status"], "ready")
        self.assertTrue(self.client.builds.logs(agent["latest_build_id"])["logs"])

    def test_the_other_agent_and_instance_operations(self):
        self.assertGreaterEqual(self.client.agents.metrics(agent["id"], window="1h")["requests"], 0)
        self.assertIsInstance(self.client.agents.logs(agent["id"], tail=5), list)
        self.assertIsInstance(self.client.instances.logs(agent["instance_id"], lines=5), list)
        self.assertEqual(self.client.instances.get(agent["instance_id"])["agent_id"], agent["id"])
        self.assertEqual(self.client.instances.status(agent["instance_id"])["status"], "RUNNING")
        # A second agent from the same archive: created, changed, deleted.
        other = self.client.agents.create("sdk-py-other", agent["source"], config={"enable_http": False},
                                          scaling={"min_instances": 0, "max_instances": 1})
        try:
            self.assertIn(other["id"], [a["id"] for a in self.client.agents.list(limit=1)])
            changed = self.client.agents.update(other["id"], display_name="Other")
            self.assertEqual(changed["display_name"], "Other")
        finally:
            self.assertTrue(self.client.agents.delete(other["id"])["deleted"])
        with self.assertRaises(hangar.NotFoundError):
            self.client.agents.get(other["id"])
        with self.assertRaises(hangar.NameTakenError) as taken:
            self.client.agents.create(AGENT_NAME, agent["source"])
        self.assertEqual((taken.exception.code, taken.exception.status), ("AGENT_NAME_TAKEN", 409))
        # A second instance of the agent's build, through the Instances API.
        extra = self.client.instances.create("sdk-py-extra", agent["id"], agent["latest_build_id"])
        try:
            self.assertEqual(self.client.instances.get(extra["id"])["name"], "sdk-py-extra")
            renamed = self.client.instances.update(extra["id"], name="sdk-py-renamed")
            self.assertEqual(renamed["name"], "sdk-py-renamed")
        finally:
            self.client.instances.delete(extra["id"], force=True)
        with self.assertRaises(hangar.NotFoundError) as gone:
            self.client.instances.get(extra["id"])
        self.assertEqual(gone.exception.code, "INSTANCE_NOT_FOUND")

    def test_uploads_users_organizations_clouds_nodes_metrics(self):
        slot = self.client.uploads.create("empty.tar.gz")
        received = self.client.uploads.put_content(slot["upload_url"], b"\x1f\x8b" + bytes(30))
        self.assertEqual((received["id"], received["size_bytes"]), (slot["id"], 32))
        user = self.client.users.create(f"sdk-{time.time_ns()}@example.com", name="SDK")
        self.assertEqual(self.client.users.get(user["id"])["email"], user["email"])
        me = self.client.me()
        org = self.client.organizations.update(me["organization_id"], name=f"org-{time.time_ns()}")
        self.assertIn(org["id"], [o["id"] for o in self.client.organizations.list()])
        local = [c for c in self.client.clouds.list() if c["name"] == "local"][0]
        self.assertEqual(self.client.clouds.get(local["id"])["name"], "local")
        with self.assertRaises(hangar.BadRequestError):
            self.client.clouds.create("", "docker")
        if me["is_operator"]:
            created = self.client.organizations.create(f"sdk-org-{time.time_ns()}", "admin@sdk.example.com")
            self.assertTrue(created["api_key"])
            nodes = self.client.nodes.list()
            self.assertGreaterEqual(len(nodes), 1)
            self.assertEqual(self.client.nodes.undrain(nodes[0]["id"])["id"], nodes[0]["id"])
            self.assertIn("hangar_", self.client.scrape_metrics())
        else:
            with self.assertRaises(hangar.PermissionDeniedError):
                self.client.nodes.list()

    def test_zz_deploying_again_redeploys_the_agent(self):
        # Named to run last in this class: the agent restarts on its new build.
        before = self.client.agents.get(agent["id"])
        again = self.client.deploy(agent_directory(tempfile.mkdtemp(dir=_tmp)), name=AGENT_NAME)
        self.assertEqual(again["id"], agent["id"])
        self.assertNotEqual(again["latest_build_id"], before["latest_build_id"])
        self.assertEqual(again["status"], "running")
        # Both builds, one per page, none twice.
        builds = [b["id"] for b in self.client.builds.list(agent["id"], limit=1)]
        self.assertLessEqual({before["latest_build_id"], again["latest_build_id"]}, set(builds))
        self.assertEqual(len(builds), len(set(builds)))
        self.assertEqual(self.client.agents.invoke(agent["id"], {"text": "again"})["output"]["upper"], "AGAIN")
        # Stopped, its instance refuses exec with the typed 409; started, it answers again.
        self.assertEqual(self.client.agents.stop(agent["id"])["status"], "stopped")
        deadline = time.monotonic() + 60
        while self.client.instances.get(agent["instance_id"])["status"] != "stopped":
            self.assertLess(time.monotonic(), deadline, "never stopped")
            time.sleep(0.2)
        with self.assertRaises(hangar.NotRunningError) as stopped:
            self.client.instances.exec(agent["instance_id"], ["true"])
        self.assertEqual((stopped.exception.code, stopped.exception.current_status),
                         ("INSTANCE_NOT_RUNNING", "stopped"))
        self.client.agents.start(agent["id"])
        deadline = time.monotonic() + 60
        while self.client.agents.get(agent["id"])["status"] != "running":
            self.assertLess(time.monotonic(), deadline, "never running again")
            time.sleep(0.2)
        self.assertEqual(self.client.agents.invoke(agent["id"], {"text": "back"})["output"]["upper"], "BACK")


class Async(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.client = hangar.AsyncClient()

    async def asyncTearDown(self) -> None:
        await self.client.close()

    async def test_invoke_sync_and_stream(self):
        result = await self.client.agents.invoke(agent["id"], {"text": "async"})
        self.assertEqual(result["output"], {"upper": "ASYNC", "length": 5})
        events = [e async for e in await self.client.agents.invoke(agent["id"], {"text": "a b"}, stream=True)]
        self.assertIsInstance(events[0], hangar.StreamStart)
        self.assertEqual([e.content for e in events if isinstance(e, hangar.StreamChunk)], ["a", "b"])
        self.assertEqual(events[-1].usage, {"words": 2})

    async def test_job_wait_and_cancel(self):
        job = await self.client.agents.invoke(agent["id"], {"text": "aj"}, wait=True)
        self.assertIsInstance(job, hangar.AsyncJob)
        self.assertEqual(job.output, {"upper": "AJ", "length": 2})
        slow = await self.client.agents.invoke(agent["id"], {"sleep": 60}, wait=False)
        await slow.cancel()
        with self.assertRaises(hangar.JobFailedError):
            await slow.wait()
        self.assertEqual(slow.status, "cancelled")

    async def test_log_follow_and_resume(self):
        tag = f"async-{time.time_ns()}"
        await self.client.agents.invoke(agent["id"], {"log": 3, "tag": tag})
        first = None
        async for line in self.client.agents.follow_logs(agent["id"], tail=1000):
            if line.message == f"{tag} 0":
                first = line
                break
        self.assertIsNotNone(first)
        async for line in self.client.agents.follow_logs(agent["id"], last_event_id=first.id):
            self.assertEqual(line.message, f"{tag} 1")
            break

    async def test_exec_pagination_and_errors(self):
        ran = await self.client.instances.exec(agent["instance_id"], ["sh", "-c", "exit 5"])
        self.assertEqual(ran.exit_code, 5)
        ids = [e["id"] async for e in self.client.events.list(limit=2)]
        with hangar.Client() as sync:
            every = [e["id"] for e in sync.events.list(limit=100)]
        self.assertGreater(len(every), 2)
        self.assertLessEqual(set(every), set(ids))
        self.assertEqual(len(ids), len(set(ids)))
        with self.assertRaises(hangar.NotFoundError) as caught:
            await self.client.jobs.get("job_doesnotexist")
        self.assertEqual(caught.exception.code, "JOB_NOT_FOUND")


if __name__ == "__main__":
    unittest.main()
