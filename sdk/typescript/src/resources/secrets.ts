/** `/v1/secrets`: values agents reference as `${secrets.NAME}`; never read back. */

import type { CallOptions, Data, RequestBody, Transport } from "../http.js";
import type { Deleted, Secret } from "../types.js";

/** `/v1/secrets`. */
export class Secrets {
  constructor(private readonly transport: Transport) {}

  /** The organization's secrets (values shown as `****`). */
  list(options: CallOptions = {}): Promise<Secret[]> {
    return this.transport.data<Data<"/v1/secrets", "get">>("GET", "/v1/secrets", { signal: options.signal });
  }

  /** Creates a secret, or replaces the value of one of that name. */
  put(body: RequestBody<"/v1/secrets", "post">, options: CallOptions = {}): Promise<Secret> {
    return this.transport.data<Data<"/v1/secrets", "post">>("POST", "/v1/secrets", { body, signal: options.signal });
  }

  /** Deletes a secret by name or ID. */
  delete(name: string, options: CallOptions = {}): Promise<Deleted> {
    return this.transport.data<Data<"/v1/secrets/{name}", "delete">>("DELETE", "/v1/secrets/{name}", {
      params: { name },
      signal: options.signal,
    });
  }
}
