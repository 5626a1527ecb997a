// Following a stream (a build's log, an agent's live log) from a browser.
// EventSource cannot send `Authorization`, so each stream is opened with a
// stream token (`POST /v1/tokens`): read-only, for one object, short-lived,
// dead with the key that minted it. The browser reconnects by itself with
// `Last-Event-ID`; when it gives up (the token expired, the server
// restarted), a new token is minted and the stream reopened after the last
// event seen. Events at or before that id are dropped, so a reconnect never
// shows a line twice.

import { post } from "./api.js";

/**
 * Follows `url` (a path with its query) as the holder of object `objectId`.
 * `onEvent(data, id)` gets each new event's parsed data; `onNamed[name]`
 * named events; `onState(text)` the connection state. Returns `{ close,
 * reconnect }`.
 */
export function follow(url, objectId, { onEvent, onNamed = {}, onState = () => {} }) {
  let source = null;
  let closed = false;
  let lastId = null;
  let retry = null;

  const kind = objectId.startsWith("build_") ? "build_id" : objectId.startsWith("inst_") ? "instance_id" : "agent_id";

  async function open() {
    if (closed) return;
    onState("connecting");
    let token;
    try {
      token = (await post("/v1/tokens", { [kind]: objectId, ttl_seconds: 3600 })).token;
    } catch (err) {
      if (err.status === 401) { close(); return; }
      onState(`cannot connect: ${err.message}`);
      retry = setTimeout(open, 3000);
      return;
    }
    if (closed) return;
    const sep = url.includes("?") ? "&" : "?";
    let full = `${url}${sep}access_token=${encodeURIComponent(token)}`;
    if (lastId !== null) full += `&last_event_id=${encodeURIComponent(lastId)}`;
    const es = new EventSource(full);
    source = es;
    es.onopen = () => onState("live");
    es.onmessage = (ev) => {
      if (ev.lastEventId !== "" && lastId !== null && Number(ev.lastEventId) <= Number(lastId)) return;
      if (ev.lastEventId !== "") lastId = ev.lastEventId;
      let data;
      try { data = JSON.parse(ev.data); } catch { data = ev.data; }
      onEvent(data, ev.lastEventId);
    };
    for (const [name, fn] of Object.entries(onNamed)) {
      es.addEventListener(name, (ev) => {
        let data;
        try { data = JSON.parse(ev.data); } catch { data = ev.data; }
        fn(data);
      });
    }
    es.onerror = () => {
      if (closed || source !== es) return;
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up on this URL: a fresh token, resumed after lastId.
        onState("reconnecting");
        retry = setTimeout(open, 2000);
      } else {
        onState("reconnecting");
      }
    };
  }

  function close() {
    closed = true;
    clearTimeout(retry);
    if (source) source.close();
    source = null;
    onState("closed");
  }

  /** Drops the connection and opens a new one, resuming after the last event. */
  function reconnect() {
    if (source) source.close();
    source = null;
    clearTimeout(retry);
    open();
  }

  open();
  return { close, reconnect, get lastId() { return lastId; } };
}
