/**
 * Who may do what: API keys, organizations, users, clouds, and the nodes
 * (servers) of a deployment. Small resources of the same shape, together.
 */

import type { CallOptions, Data, RequestBody, Transport } from "../http.js";
import type { ApiKey, Cloud, CreatedOrganization, Node, Organization, User } from "../types.js";

/** `/v1/api_keys`. */
export class ApiKeys {
  constructor(private readonly transport: Transport) {}

  list(options: CallOptions = {}): Promise<ApiKey[]> {
    return this.transport.data<Data<"/v1/api_keys", "get">>("GET", "/v1/api_keys", { signal: options.signal });
  }

  /** Creates a key; the key itself (`key`) is in this answer only. */
  create(body: RequestBody<"/v1/api_keys", "post">, options: CallOptions = {}): Promise<ApiKey> {
    return this.transport.data<Data<"/v1/api_keys", "post">>("POST", "/v1/api_keys", { body, signal: options.signal });
  }

  /** Revokes a key: it, and the stream tokens it made, stop working at once. */
  revoke(id: string, options: CallOptions = {}): Promise<ApiKey> {
    return this.transport.data<Data<"/v1/api_keys/{id}", "delete">>("DELETE", "/v1/api_keys/{id}", {
      params: { id },
      signal: options.signal,
    });
  }
}

/** `/v1/organizations`. */
export class Organizations {
  constructor(private readonly transport: Transport) {}

  list(options: CallOptions = {}): Promise<Organization[]> {
    return this.transport.data<Data<"/v1/organizations", "get">>("GET", "/v1/organizations", { signal: options.signal });
  }

  /** Creates an organization with its first admin and their key (operators only). */
  create(body: RequestBody<"/v1/organizations", "post">, options: CallOptions = {}): Promise<CreatedOrganization> {
    return this.transport.data<Data<"/v1/organizations", "post">>("POST", "/v1/organizations", {
      body,
      signal: options.signal,
    });
  }

  get(id: string, options: CallOptions = {}): Promise<Organization> {
    return this.transport.data<Data<"/v1/organizations/{id}", "get">>("GET", "/v1/organizations/{id}", {
      params: { id },
      signal: options.signal,
    });
  }

  update(id: string, body: RequestBody<"/v1/organizations/{id}", "patch">, options: CallOptions = {}): Promise<Organization> {
    return this.transport.data<Data<"/v1/organizations/{id}", "patch">>("PATCH", "/v1/organizations/{id}", {
      params: { id },
      body,
      signal: options.signal,
    });
  }
}

/** `/v1/users`. */
export class Users {
  constructor(private readonly transport: Transport) {}

  list(options: CallOptions = {}): Promise<User[]> {
    return this.transport.data<Data<"/v1/users", "get">>("GET", "/v1/users", { signal: options.signal });
  }

  create(body: RequestBody<"/v1/users", "post">, options: CallOptions = {}): Promise<User> {
    return this.transport.data<Data<"/v1/users", "post">>("POST", "/v1/users", { body, signal: options.signal });
  }

  get(id: string, options: CallOptions = {}): Promise<User> {
    return this.transport.data<Data<"/v1/users/{id}", "get">>("GET", "/v1/users/{id}", {
      params: { id },
      signal: options.signal,
    });
  }
}

/** `/v1/clouds`: where agents run (`local` is the default). */
export class Clouds {
  constructor(private readonly transport: Transport) {}

  list(options: CallOptions = {}): Promise<Cloud[]> {
    return this.transport.data<Data<"/v1/clouds", "get">>("GET", "/v1/clouds", { signal: options.signal });
  }

  create(body: RequestBody<"/v1/clouds", "post">, options: CallOptions = {}): Promise<Cloud> {
    return this.transport.data<Data<"/v1/clouds", "post">>("POST", "/v1/clouds", { body, signal: options.signal });
  }

  get(id: string, options: CallOptions = {}): Promise<Cloud> {
    return this.transport.data<Data<"/v1/clouds/{id}", "get">>("GET", "/v1/clouds/{id}", {
      params: { id },
      signal: options.signal,
    });
  }
}

/** `/v1/nodes`: the servers on one database (operators only). */
export class Nodes {
  constructor(private readonly transport: Transport) {}

  list(options: CallOptions = {}): Promise<Node[]> {
    return this.transport.data<Data<"/v1/nodes", "get">>("GET", "/v1/nodes", { signal: options.signal });
  }

  /** Drains a node: it takes no instance, and those it ran move elsewhere. */
  drain(id: string, options: CallOptions = {}): Promise<Node> {
    return this.transport.data<Data<"/v1/nodes/{id}/drain", "post">>("POST", "/v1/nodes/{id}/drain", {
      params: { id },
      signal: options.signal,
    });
  }

  /** Ends a node's drain. */
  undrain(id: string, options: CallOptions = {}): Promise<Node> {
    return this.transport.data<Data<"/v1/nodes/{id}/drain", "delete">>("DELETE", "/v1/nodes/{id}/drain", {
      params: { id },
      signal: options.signal,
    });
  }
}
