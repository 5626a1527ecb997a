/**
 * `/v1/uploads`: a slot for an agent's archive and the signed URL its bytes
 * are `PUT` to. The archive goes in an agent's `source` as
 * `{"type": "upload", "archive_url": upload.upload_url}`.
 */

import type { CallOptions, Data, RequestBody, Transport } from "../http.js";
import type { Upload, UploadReceived } from "../types.js";

/** An archive's bytes: a `.tar.gz`, `.tar` or `.zip`. */
export type Archive = Blob | ArrayBuffer | ArrayBufferView | ReadableStream<Uint8Array>;

/** `/v1/uploads`. */
export class Uploads {
  constructor(private readonly transport: Transport) {}

  /** Opens an upload slot. */
  create(body: NonNullable<RequestBody<"/v1/uploads", "post">> = {}, options: CallOptions = {}): Promise<Upload> {
    return this.transport.data<Data<"/v1/uploads", "post">>("POST", "/v1/uploads", { body, signal: options.signal });
  }

  /**
   * Sends the archive to an upload's signed URL (no API key: the signature
   * is the authority, so the URL works from wherever it is handed).
   */
  putContent(upload: Pick<Upload, "upload_url">, archive: Archive, options: CallOptions = {}): Promise<UploadReceived> {
    return this.transport.data<Data<"/v1/uploads/{id}/content", "put">>("PUT", upload.upload_url, {
      body: archive,
      headers: { "content-type": "application/octet-stream", accept: "application/json" },
      anonymous: true,
      signal: options.signal,
    });
  }

  /** Opens a slot and sends the archive: the `source` of an agent built from it. */
  async upload(archive: Archive, filename?: string, options: CallOptions = {}): Promise<{ type: "upload"; archive_url: string }> {
    const upload = await this.create(filename ? { filename } : {}, options);
    await this.putContent(upload, archive, options);
    return { type: "upload", archive_url: upload.upload_url };
  }
}
