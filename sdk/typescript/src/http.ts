/**
 * The one place requests are made: URL building from the document's path
 * templates, the API key, JSON in and out, the `/v1` envelope unwrapped, and
 * every non-2xx answer turned into a {@link HangarError}. It uses only what
 * Node 20 and browsers both have (`fetch`, `URL`, `TextDecoder`), so the
 * client runs in either.
 *
 * The type helpers here read request bodies and answers out of the
 * generated `paths` (src/schema.ts) by path template and method: a
 * resource method is typed by the operation it calls, so when the document
 * changes, regenerating the types changes the client's types with it.
 */

import { HangarError } from "./errors.js";
import type { paths } from "./schema.js";

/** The document's path templates. */
export type PathTemplate = keyof paths;
/** Methods an operation may have. */
export type Method = "get" | "put" | "post" | "delete" | "patch";
type Operation<P extends PathTemplate, M extends Method> = NonNullable<paths[P][M]>;

/** The JSON request body of an operation. */
export type RequestBody<P extends PathTemplate, M extends Method> =
  Operation<P, M> extends { requestBody?: infer B }
    ? NonNullable<B> extends { content: { "application/json": infer J } }
      ? J
      : never
    : never;

/** The JSON answer of an operation's success (200, 201 or 202). */
export type Answer<P extends PathTemplate, M extends Method> =
  Operation<P, M> extends { responses: infer R }
    ? R extends { 200: { content: { "application/json": infer J } } }
      ? J
      : R extends { 201: { content: { "application/json": infer J } } }
        ? J
        : R extends { 202: { content: { "application/json": infer J } } }
          ? J
          : unknown
    : unknown;

/** The `data` of a `/v1` answer's envelope (the answer itself elsewhere). */
export type Data<P extends PathTemplate, M extends Method> =
  Answer<P, M> extends { success: boolean; data: infer D } ? D : Answer<P, M>;

/** Query parameters: absent values are left out. */
export type Query = Record<string, string | number | boolean | null | undefined>;

/** How the client reaches the server. */
export interface ClientOptions {
  /** The server's URL, e.g. `https://hangar.example.com` (a path prefix is kept). */
  baseUrl: string;
  /** An API key (`hgr_…`), sent as `Authorization: Bearer`. */
  apiKey?: string;
  /** A `fetch` to use instead of the global one (tests, proxies, retries). */
  fetch?: typeof fetch;
  /** Headers added to every request. */
  headers?: Record<string, string>;
}

/** One request. */
export interface RequestOptions {
  /** Values of the template's `{name}` segments. */
  params?: Record<string, string>;
  query?: Query;
  /** Sent as JSON unless it is a `Blob`, `ArrayBuffer`, typed array or stream. */
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  /** Leave out `Authorization` (a signed upload URL is its own authority). */
  anonymous?: boolean;
}

/** Per-call options every method takes. */
export interface CallOptions {
  /** Aborts the request (and, for streams, the stream). */
  signal?: AbortSignal;
}

/** Sends requests to one server with one key. */
export class Transport {
  readonly baseUrl: string;
  readonly apiKey: string | undefined;
  private readonly fetcher: typeof fetch;
  private readonly headers: Record<string, string>;

  constructor(options: ClientOptions) {
    if (!options.baseUrl) throw new TypeError("baseUrl is required");
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    // Bound: a browser's fetch throws "Illegal invocation" when called as a
    // method of another object.
    this.fetcher = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.headers = options.headers ?? {};
  }

  /** The absolute URL of `template` with `params` and `query` filled in. */
  url(template: string, params: Record<string, string> = {}, query: Query = {}): string {
    const path = template.replace(/\{([^}]+)\}/g, (_, name: string) => {
      const value = params[name];
      if (value === undefined || value === "") throw new TypeError(`${template}: missing ${name}`);
      return encodeURIComponent(value);
    });
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) search.set(key, String(value));
    }
    const qs = search.toString();
    return `${this.baseUrl}${path}${qs ? `?${qs}` : ""}`;
  }

  /** Sends a request; the response if it is 2xx, else its HangarError. */
  async send(method: string, urlOrTemplate: string, options: RequestOptions = {}): Promise<Response> {
    const url = urlOrTemplate.startsWith("/")
      ? this.url(urlOrTemplate, options.params, options.query)
      : urlOrTemplate;
    const headers: Record<string, string> = { ...this.headers, ...options.headers };
    if (this.apiKey && !options.anonymous) headers.authorization = `Bearer ${this.apiKey}`;
    let body: BodyInit | undefined;
    if (options.body !== undefined) {
      if (isBinary(options.body)) {
        body = options.body as BodyInit;
        headers["content-type"] ??= "application/octet-stream";
      } else {
        body = JSON.stringify(options.body);
        headers["content-type"] = "application/json";
      }
    }
    const init: RequestInit & { duplex?: "half" } = { method: method.toUpperCase(), headers };
    if (body !== undefined) init.body = body;
    if (options.signal) init.signal = options.signal;
    // A stream body needs half-duplex in fetch implementations that stream requests.
    if (typeof ReadableStream !== "undefined" && body instanceof ReadableStream) init.duplex = "half";
    const response = await this.fetcher(url, init);
    if (!response.ok) throw await HangarError.fromResponse(response);
    return response;
  }

  /** Sends a request and reads its JSON answer (`undefined` for 204). */
  async json<T>(method: string, template: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.send(method, template, {
      ...options,
      headers: { accept: "application/json", ...options.headers },
    });
    if (response.status === 204) return undefined as T;
    const text = await response.text();
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /** Like {@link json}, with the `/v1` envelope's `data`. */
  async data<T>(method: string, template: string, options: RequestOptions = {}): Promise<T> {
    const answer = await this.json<{ data: T }>(method, template, options);
    return answer.data;
  }

  /** Sends a request and reads its text answer. */
  async text(method: string, template: string, options: RequestOptions = {}): Promise<string> {
    const response = await this.send(method, template, options);
    return response.text();
  }
}

function isBinary(body: unknown): boolean {
  return (
    (typeof Blob !== "undefined" && body instanceof Blob) ||
    body instanceof ArrayBuffer ||
    ArrayBuffer.isView(body) ||
    (typeof ReadableStream !== "undefined" && body instanceof ReadableStream) ||
    (typeof FormData !== "undefined" && body instanceof FormData) ||
    typeof body === "string"
  );
}
