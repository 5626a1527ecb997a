/**
 * Errors of the client. Every failure the API answers is a
 * {@link HangarError} carrying the envelope's `code` and `message`
 * (`{"error": {"code", "message", …}}`, the same in both APIs), the HTTP
 * status and the envelope's other fields (`field`, `current_status`,
 * `details`, `retry_after_seconds`, `request_id`…), so callers branch on
 * `code`, never on message text. A failure with no answer (the network, an
 * abort) is the platform's own error, not a HangarError: it says nothing the
 * server decided.
 */

/** What the server said went wrong. */
export class HangarError extends Error {
  override readonly name = "HangarError";
  /** Machine-readable code: `AGENT_NOT_FOUND`, `INVALID_REQUEST`, … */
  readonly code: string;
  /** HTTP status of the answer; 200 for an `error` event inside a stream. */
  readonly status: number;
  /** The envelope's `error` object as sent (code and message included). */
  readonly body: Record<string, unknown>;
  /** `x-request-id` of the answer, to quote to an operator. */
  readonly requestId: string | undefined;

  constructor(
    status: number,
    code: string,
    message: string,
    body: Record<string, unknown> = {},
    requestId?: string,
  ) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
    this.requestId = requestId;
  }

  /** The field a 400 `INVALID_REQUEST` blames, when one is named. */
  get field(): string | undefined {
    return typeof this.body.field === "string" ? this.body.field : undefined;
  }

  /** `details` of the envelope (`AGENT_ERROR`'s agent status and body, quotas…). */
  get details(): unknown {
    return this.body.details;
  }

  /**
   * The error of an answer that is not 2xx. An answer without the envelope
   * (a proxy's page, say) still becomes a HangarError, with code `HTTP_<status>`.
   */
  static async fromResponse(response: Response): Promise<HangarError> {
    const text = await response.text().catch(() => "");
    const requestId = response.headers.get("x-request-id") ?? undefined;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    const error = (parsed as { error?: unknown } | undefined)?.error;
    if (error && typeof error === "object" && typeof (error as { code?: unknown }).code === "string") {
      const body = error as Record<string, unknown>;
      const message = typeof body.message === "string" ? body.message : String(body.code);
      return new HangarError(response.status, String(body.code), message, body, requestId);
    }
    const message = text.trim().slice(0, 200) || response.statusText || `HTTP ${response.status}`;
    return new HangarError(response.status, `HTTP_${response.status}`, message, {}, requestId);
  }
}

/** `jobs.wait` gave up before the job finished. */
export class WaitTimeoutError extends Error {
  override readonly name = "WaitTimeoutError";
  /** The job, as last seen. */
  readonly jobId: string;

  constructor(jobId: string, seconds: number) {
    super(`job ${jobId} did not finish within ${seconds} s`);
    this.jobId = jobId;
  }
}
