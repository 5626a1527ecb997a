/**
 * `/v1/tokens`: stream tokens, read-only and short-lived, for one agent's,
 * instance's or build's streams — what a browser's `EventSource` (which
 * cannot send `Authorization`) authenticates with. The resources' `…StreamUrl`
 * methods mint one and put it in a URL.
 */

import type { CallOptions, Data, RequestBody, Transport } from "../http.js";
import type { StreamToken } from "../types.js";

/** `/v1/tokens`. */
export class Tokens {
  constructor(private readonly transport: Transport) {}

  /** Mints a token for exactly one of `agent_id`, `instance_id`, `build_id`. */
  create(body: RequestBody<"/v1/tokens", "post">, options: CallOptions = {}): Promise<StreamToken> {
    return this.transport.data<Data<"/v1/tokens", "post">>("POST", "/v1/tokens", { body, signal: options.signal });
  }
}
