// The API client: every call the console makes goes through here, to the
// public API of the server that served the page, with the signed-in key as
// `Authorization: Bearer`. The key lives in this tab's sessionStorage only:
// never in a URL, a cookie or localStorage, and gone when the tab closes.

const KEY = "hangar.apiKey";

/** Who is signed in: the key and what `GET /v1/me` said about it. */
export const session = { key: sessionStorage.getItem(KEY), me: null };

const listeners = new Set();
/** Calls `fn(reason)` when the session ends (sign-out, revoked key). */
export function onSignOut(fn) { listeners.add(fn); }

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Checks `key` with `GET /v1/me`; keeps it for this tab when it works. */
export async function signIn(key) {
  session.key = key;
  try {
    const me = await api("GET", "/v1/me", undefined, { quietAuth: true });
    session.me = me.data ?? me;
  } catch (err) {
    session.key = null;
    throw err;
  }
  sessionStorage.setItem(KEY, key);
  return session.me;
}

export function signOut(reason) {
  session.key = null;
  session.me = null;
  sessionStorage.removeItem(KEY);
  for (const fn of listeners) fn(reason);
}

/**
 * One API call. Answers the parsed JSON body; throws `ApiError` with the
 * envelope's code and message otherwise. A 401 ends the session: the key
 * was revoked or never worked.
 */
export async function api(method, path, body, options = {}) {
  if (!session.key) throw new ApiError(401, "SIGNED_OUT", "not signed in");
  const headers = { Authorization: `Bearer ${session.key}`, Accept: "application/json", ...(options.headers ?? {}) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: options.signal,
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "UNREACHABLE", "the server cannot be reached");
  }
  if (options.raw && res.ok) return res;
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!res.ok) {
    const err = new ApiError(res.status, json?.error?.code ?? `HTTP_${res.status}`, json?.error?.message ?? (text || res.statusText));
    if (res.status === 401 && !options.quietAuth) signOut("Your API key is no longer accepted: you have been signed out.");
    throw err;
  }
  return json;
}

/** `GET path` and its `data`. */
export async function get(path) {
  const json = await api("GET", path);
  return json?.data ?? json;
}

export const post = (path, body) => api("POST", path, body).then((j) => j?.data ?? j);
export const patch = (path, body) => api("PATCH", path, body).then((j) => j?.data ?? j);
export const del = (path) => api("DELETE", path).then((j) => j?.data ?? j);

/** Every page of a list endpoint (`pagination.next_cursor`), up to `max` items. */
export async function list(path, max = 500) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const json = await api("GET", cursor ? `${path}${sep}cursor=${encodeURIComponent(cursor)}` : path);
    const data = json?.data ?? [];
    items.push(...data);
    cursor = json?.pagination?.next_cursor ?? null;
  } while (cursor && items.length < max);
  return items;
}

export const enc = encodeURIComponent;
