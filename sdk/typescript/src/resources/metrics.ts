/** `/metrics`: the server's Prometheus text (operators' admin keys). */

import type { CallOptions, Transport } from "../http.js";

/** `/metrics`. */
export class Metrics {
  constructor(private readonly transport: Transport) {}

  /** The Prometheus exposition text. */
  scrape(options: CallOptions = {}): Promise<string> {
    return this.transport.text("GET", "/metrics", { signal: options.signal });
  }
}
