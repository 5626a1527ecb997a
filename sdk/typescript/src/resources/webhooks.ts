/** `/v1/webhooks`: endpoints that receive the organization's events, and their deliveries. */

import type { Answer, CallOptions, Data, RequestBody, Transport } from "../http.js";
import { Page, paginate } from "../pagination.js";
import type { Deleted, Delivery, Webhook } from "../types.js";

/** Query of a page of deliveries. */
export interface ListDeliveries extends CallOptions {
  limit?: number;
  cursor?: string;
}

/** `/v1/webhooks`. */
export class Webhooks {
  constructor(private readonly transport: Transport) {}

  list(options: CallOptions = {}): Promise<Webhook[]> {
    return this.transport.data<Data<"/v1/webhooks", "get">>("GET", "/v1/webhooks", { signal: options.signal });
  }

  /** Creates an endpoint; its signing `secret` is in this answer only. */
  create(body: RequestBody<"/v1/webhooks", "post">, options: CallOptions = {}): Promise<Webhook> {
    return this.transport.data<Data<"/v1/webhooks", "post">>("POST", "/v1/webhooks", { body, signal: options.signal });
  }

  get(id: string, options: CallOptions = {}): Promise<Webhook> {
    return this.transport.data<Data<"/v1/webhooks/{id}", "get">>("GET", "/v1/webhooks/{id}", {
      params: { id },
      signal: options.signal,
    });
  }

  update(id: string, body: RequestBody<"/v1/webhooks/{id}", "patch">, options: CallOptions = {}): Promise<Webhook> {
    return this.transport.data<Data<"/v1/webhooks/{id}", "patch">>("PATCH", "/v1/webhooks/{id}", {
      params: { id },
      body,
      signal: options.signal,
    });
  }

  delete(id: string, options: CallOptions = {}): Promise<Deleted> {
    return this.transport.data<Data<"/v1/webhooks/{id}", "delete">>("DELETE", "/v1/webhooks/{id}", {
      params: { id },
      signal: options.signal,
    });
  }

  /** One page of an endpoint's deliveries, newest first; iterate it for all. */
  async deliveries(id: string, query: ListDeliveries = {}): Promise<Page<Delivery>> {
    const { signal, ...q } = query;
    const answer = await this.transport.json<Answer<"/v1/webhooks/{id}/deliveries", "get">>(
      "GET",
      "/v1/webhooks/{id}/deliveries",
      { params: { id }, query: q, signal },
    );
    return new Page<Delivery>(answer, (cursor) => this.deliveries(id, { ...query, cursor }));
  }

  /** Every delivery of an endpoint, a page at a time. */
  iterateDeliveries(id: string, query: ListDeliveries = {}): AsyncGenerator<Delivery> {
    return paginate(() => this.deliveries(id, query));
  }

  /** Delivers an event again. */
  redeliver(id: string, deliveryId: string, options: CallOptions = {}): Promise<Delivery> {
    return this.transport.data<Data<"/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", "post">>(
      "POST",
      "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
      { params: { id, delivery_id: deliveryId }, signal: options.signal },
    );
  }
}
