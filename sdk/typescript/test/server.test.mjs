// The client against a real `hangar serve` (HANGAR_URL, HANGAR_KEY: the
// Rust test crates/hangar/tests/sdk_typescript.rs starts one and runs
// `npm test` with them). It deploys test/agent from an uploaded archive and
// uses what a caller would: sync, streamed and async invokes, waiting for and
// cancelling jobs, following logs with resume and through a stream token
// URL, pagination, typed errors, secrets and API keys.
//
// Without HANGAR_URL these tests are skipped, saying how to run them; with
// CI=true that is a failure instead.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { Hangar, HangarError, readEvents } from "../dist/index.js";

const URL_ = process.env.HANGAR_URL;
const KEY = process.env.HANGAR_KEY;
const why = "HANGAR_URL and HANGAR_KEY name no server: run `cargo test -p hangar --test sdk_typescript` from the repository's root, or start `hangar serve` and set them";
if (!URL_ || !KEY) {
  assert.notEqual(process.env.CI, "true", `${why}, and CI=true`);
}
const skip = !URL_ || !KEY ? why : false;

const AGENT_DIR = join(dirname(fileURLToPath(import.meta.url)), "agent");

/** Polls `check` until it returns something, for at most `seconds`. */
async function eventually(what, seconds, check) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const found = await check();
    if (found) return found;
    assert.ok(Date.now() < deadline, `never ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Reads a followed log until a line's message contains `want`; every event read. */
async function readUntil(events, want) {
  const seen = [];
  for await (const event of events) {
    seen.push(event);
    if (event.line.message.includes(want)) return seen;
  }
  assert.fail(`the log ended before ${want}: ${JSON.stringify(seen)}`);
}

/** A client whose fetch breaks the first event stream it gets after `events` events. */
function cuttingClient(events) {
  const requests = [];
  let cut = false;
  const fetch = async (url, init = {}) => {
    requests.push({ url: String(url), headers: { ...init.headers } });
    const response = await globalThis.fetch(url, init);
    if (cut || !response.headers.get("content-type")?.startsWith("text/event-stream")) return response;
    cut = true;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = "";
    let sent = 0;
    let broken = false;
    const body = new ReadableStream({
      async pull(controller) {
        // Erroring discards what is queued, so the break comes on the pull
        // after the last chunk was read.
        if (broken) return controller.error(new TypeError("connection lost (broken by the test)"));
        const { done, value } = await reader.read();
        if (done) return controller.close();
        text += decoder.decode(value, { stream: true });
        const ends = [...text.matchAll(/\n\n/g)];
        const upTo = ends.length >= events ? ends[events - 1].index + 2 : text.length;
        controller.enqueue(new TextEncoder().encode(text.slice(sent, upTo)));
        sent = upTo;
        if (ends.length >= events) {
          broken = true;
          await reader.cancel();
        }
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
  return { client: new Hangar({ baseUrl: URL_, apiKey: KEY, fetch }), requests };
}

describe("against a real hangar serve", { skip }, () => {
  const hangar = new Hangar({ baseUrl: URL_ ?? "http://unused", apiKey: KEY });
  let org;
  let agent;

  before(async () => {
    org = (await hangar.me()).organization_id;
    const archive = execFileSync("tar", ["-czf", "-", "-C", AGENT_DIR, "."]);
    const source = await hangar.uploads.upload(new Uint8Array(archive), "ts-sdk-agent.tar.gz");
    agent = await hangar.agents.create({ name: "ts-sdk", cloud_id: "local", source });
    assert.ok(agent.latest_build_id, "the agent has a build");
    // Its build log, followed to the end: the build's outcome last.
    const events = [];
    for await (const event of hangar.builds.followLogs(agent.latest_build_id)) events.push(event);
    const done = events.at(-1);
    assert.equal(done.type, "done", JSON.stringify(events));
    assert.equal(done.status, "ready", JSON.stringify(events));
    agent = await eventually("running", 120, async () => {
      const now = await hangar.agents.get(agent.id);
      return String(now.status).toLowerCase() === "running" && now.instance_id ? now : undefined;
    });
  });

  after(async () => {
    if (agent) await hangar.agents.delete(agent.id);
  });

  test("a sync invoke answers the agent's output and usage", async () => {
    const result = await hangar.agents.invoke(agent.id, { n: 21 });
    assert.deepEqual(result.output, { n: 21, doubled: 42 });
    assert.deepEqual(result.usage, { calls: 1 });
  });

  test("a streamed invoke is start, a chunk per word, done", async () => {
    const events = [];
    for await (const event of hangar.agents.stream(agent.id, { text: "in silicon dreams", stream: true })) {
      events.push(event);
    }
    assert.equal(events[0].type, "start");
    assert.match(events[0].request_id, /^req_/);
    assert.deepEqual(
      events.filter((e) => e.type === "chunk").map((e) => e.content),
      ["in", "silicon", "dreams"],
    );
    assert.deepEqual(events.at(-1), { type: "done", usage: { words: 3 } });
  });

  test("failures are HangarErrors with the envelope's code and the status", async () => {
    const missing = await hangar.agents.get("agent_doesnotexist").catch((e) => e);
    assert.ok(missing instanceof HangarError, String(missing));
    assert.equal(missing.status, 404);
    assert.equal(missing.code, "AGENT_NOT_FOUND");
    assert.match(missing.message, /agent_doesnotexist/);

    const failed = await hangar.agents.invoke(agent.id, { fail: true }).catch((e) => e);
    assert.ok(failed instanceof HangarError, String(failed));
    assert.equal(failed.status, 502);
    assert.equal(failed.code, "AGENT_ERROR");
    assert.equal(failed.details.agent_status, 500);

    const bad = await hangar.agents.invoke(agent.id, {}, { timeout: 0 }).catch((e) => e);
    assert.equal(bad.code, "INVALID_REQUEST");
    assert.equal(bad.field, "options.timeout");

    const nobody = await new Hangar({ baseUrl: URL_, apiKey: "hgr_nottherightkey" }).me().catch((e) => e);
    assert.equal(nobody.status, 401);
    assert.equal(nobody.code, "UNAUTHORIZED");
  });

  test("an async invoke is a job that wait polls until it completes", async () => {
    const job = await hangar.agents.submit(agent.id, { n: 5 });
    assert.match(job.id, /^job_/);
    const finished = await job.wait({ timeoutSeconds: 120 });
    assert.equal(finished.status, "completed", JSON.stringify(finished));
    assert.deepEqual(finished.output, { n: 5, doubled: 10 });
  });

  test("a running job is cancelled; a finished one cannot be (JOB_ALREADY_FINISHED)", async () => {
    const job = await hangar.agents.submit(agent.id, { sleep: 600 });
    await eventually("running", 60, async () => (await job.get()).status === "running");
    const cancelled = await job.cancel();
    assert.equal(cancelled.status, "cancelled");
    const waited = await job.wait({ timeoutSeconds: 30 });
    assert.equal(waited.status, "cancelled");
    // Cancelling is idempotent: again, it is still cancelled.
    assert.equal((await job.cancel()).status, "cancelled");

    const done = await hangar.agents.submit(agent.id, { n: 1 });
    assert.equal((await done.wait({ timeoutSeconds: 120 })).status, "completed");
    const late = await done.cancel().catch((e) => e);
    assert.ok(late instanceof HangarError, String(late));
    assert.equal(late.status, 409);
    assert.equal(late.code, "JOB_ALREADY_FINISHED");

    // Both are listed, newest first (a page at a time); the cancelled one by its status.
    const listed = [];
    for await (const j of hangar.jobs.iterate({ agent_id: agent.id, limit: 1 })) listed.push(j.id);
    assert.ok(listed.indexOf(done.id) < listed.indexOf(job.id), JSON.stringify(listed));
    const cancelledPage = await hangar.jobs.list({ agent_id: agent.id, status: "cancelled" });
    const cancelledIds = cancelledPage.data.map((j) => j.id);
    assert.ok(cancelledIds.includes(job.id) && !cancelledIds.includes(done.id), JSON.stringify(cancelledIds));
  });

  test("a followed log resumes after the last line seen", async () => {
    await hangar.agents.invoke(agent.id, { log: ["alpha-1", "alpha-2", "alpha-3"] });
    const first = await readUntil(hangar.agents.followLogs(agent.id, { tail: 1000 }), "alpha-3");
    const last = first.at(-1).id;
    assert.match(last, /^\d+$/);

    await hangar.agents.invoke(agent.id, { log: ["beta-1", "beta-2"] });
    const resumed = await readUntil(hangar.agents.followLogs(agent.id, { lastEventId: last }), "beta-2");
    const messages = resumed.map((e) => e.line.message);
    assert.ok(!messages.some((m) => m.includes("alpha")), `lines before the resume point came again: ${messages}`);
    assert.ok(messages.indexOf("beta-1") < messages.indexOf("beta-2") && messages.includes("beta-1"), `${messages}`);
    assert.ok(resumed.every((e) => Number(e.id) > Number(last)), JSON.stringify(resumed));
  });

  test("a follow whose connection breaks reopens with Last-Event-ID: no line lost or repeated", async () => {
    await hangar.agents.invoke(agent.id, { log: ["gamma-1", "gamma-2", "gamma-3", "gamma-4"] });
    const whole = await readUntil(hangar.agents.followLogs(agent.id, { tail: 1000 }), "gamma-4");

    const { client, requests } = cuttingClient(2);
    const read = await readUntil(client.agents.followLogs(agent.id, { tail: 1000 }), "gamma-4");
    assert.deepEqual(read.map((e) => e.id), whole.map((e) => e.id));
    assert.equal(requests.length, 2, JSON.stringify(requests));
    assert.equal(requests[0].headers["last-event-id"], undefined);
    assert.equal(requests[1].headers["last-event-id"], whole[1].id);
  });

  test("a stream token URL follows the log with no API key, as an EventSource would", async () => {
    await hangar.agents.invoke(agent.id, { log: ["delta-1", "delta-2"] });
    const url = await hangar.agents.logStreamUrl(agent.id, { ttlSeconds: 60 });
    assert.ok(!url.includes(KEY), "the API key is not in the URL");
    assert.match(new URL(url).searchParams.get("access_token"), /^hgt_/);

    const read = async (headers) => {
      const controller = new AbortController();
      const response = await fetch(url, { headers: { accept: "text/event-stream", ...headers }, signal: controller.signal });
      assert.equal(response.status, 200);
      assert.match(response.headers.get("content-type"), /^text\/event-stream/);
      const events = [];
      for await (const event of readEvents(response.body)) {
        events.push(event);
        if (event.data.includes("delta-2")) break;
      }
      controller.abort();
      return events;
    };
    const all = await read({});
    const delta1 = all.find((e) => e.data.includes("delta-1"));
    assert.ok(delta1?.id, JSON.stringify(all));
    // What an EventSource sends when it reconnects: the stream resumes after it.
    const resumed = await read({ "last-event-id": delta1.id });
    assert.ok(resumed.every((e) => Number(e.id) > Number(delta1.id)), JSON.stringify(resumed));
    assert.ok(resumed.some((e) => e.data.includes("delta-2")));

    // The instance's log has a token URL too, and a token reads only its object.
    const instanceUrl = await hangar.instances.logStreamUrl(org, agent.instance_id);
    const other = instanceUrl.replace(agent.instance_id, "inst_someoneelse");
    const refused = await fetch(other);
    assert.equal(refused.status, 404);
    const plain = await fetch(url.replace(/access_token=[^&]+/, "access_token=hgt_forged.sig"));
    assert.equal(plain.status, 401);
  });

  test("lists page with cursors, and iterating walks every page", async () => {
    const seen = [];
    const page = await hangar.events.list({ limit: 100 });
    assert.ok(page.data.length >= 2, `too few events to page: ${page.data.length}`);
    const counting = new Hangar({
      baseUrl: URL_,
      apiKey: KEY,
      fetch: (url, init) => {
        seen.push(String(url));
        return fetch(url, init);
      },
    });
    const ids = [];
    for await (const event of counting.events.iterate({ limit: 1 })) {
      ids.push(event.id);
      if (ids.length === page.data.length) break;
    }
    assert.deepEqual(ids, page.data.map((e) => e.id));
    assert.equal(seen.length, page.data.length, "one request per page of one");
    assert.ok(seen.slice(1).every((u) => new URL(u).searchParams.get("cursor")), "later pages ask with a cursor");

    const first = await hangar.events.list({ limit: 1 });
    assert.equal(first.hasMore, true);
    const second = await first.nextPage();
    assert.equal(second.data[0].id, page.data[1].id);

    const builds = [];
    for await (const build of hangar.builds.iterate(agent.id, { limit: 1 })) builds.push(build.id);
    assert.deepEqual(builds, [agent.latest_build_id]);
  });

  test("the Instances API: get, status, list, exec", async () => {
    const instance = await hangar.instances.get(agent.instance_id);
    assert.equal(instance.id, agent.instance_id);
    const status = await hangar.instances.status(org, agent.instance_id);
    assert.equal(String(status.status).toLowerCase(), "running", JSON.stringify(status));
    const listed = [];
    for await (const i of hangar.instances.iterate(org)) listed.push(i.id);
    assert.ok(listed.includes(agent.instance_id), JSON.stringify(listed));
    const exec = await hangar.instances.exec(org, agent.instance_id, ["sh", "-c", "echo out; exit 3"]);
    assert.equal(exec.output.trim(), "out");
    assert.equal(exec.exitCode, 3);
  });

  test("secrets: put, list (never the value), replace, delete", async () => {
    const created = await hangar.secrets.put({ name: "TS_SDK_TOKEN", value: "s3cret" });
    assert.equal(created.name, "TS_SDK_TOKEN");
    assert.equal(created.value, "****");
    let listed = await hangar.secrets.list();
    assert.deepEqual(listed.filter((s) => s.name === "TS_SDK_TOKEN").map((s) => s.value), ["****"]);
    const replaced = await hangar.secrets.put({ name: "TS_SDK_TOKEN", value: "other" });
    assert.equal(replaced.id, created.id);
    const deleted = await hangar.secrets.delete("TS_SDK_TOKEN");
    assert.equal(deleted.deleted, true);
    listed = await hangar.secrets.list();
    assert.ok(!listed.some((s) => s.name === "TS_SDK_TOKEN"));
    const gone = await hangar.secrets.delete("TS_SDK_TOKEN").catch((e) => e);
    assert.equal(gone.code, "SECRET_NOT_FOUND");
    assert.equal(gone.status, 404);
  });

  test("API keys: a created key works until it is revoked", async () => {
    const created = await hangar.apiKeys.create({ name: "ts-sdk-key" });
    assert.match(created.key, /^hgr_/);
    const other = new Hangar({ baseUrl: URL_, apiKey: created.key });
    assert.equal((await other.me()).api_key_id, created.id);
    const listed = await hangar.apiKeys.list();
    const mine = listed.find((k) => k.id === created.id);
    assert.equal(mine?.name, "ts-sdk-key");
    assert.equal(mine.key, undefined, "a listed key has no secret");
    const revoked = await hangar.apiKeys.revoke(created.id);
    assert.ok(revoked.revoked_at);
    const refused = await other.me().catch((e) => e);
    assert.ok(refused instanceof HangarError);
    assert.equal(refused.code, "UNAUTHORIZED");
  });
});
