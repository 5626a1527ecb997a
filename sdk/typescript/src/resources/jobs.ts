/**
 * Jobs: async invocations. `wait` polls with backoff until the job is
 * finished; `cancel` stops one that is pending or running.
 */

import { WaitTimeoutError } from "../errors.js";
import type { Answer, CallOptions, Data, Transport } from "../http.js";
import { Page, paginate } from "../pagination.js";
import type { Job } from "../types.js";
import { backoffDelay, sleep, type Backoff } from "../wait.js";

/** Statuses after which a job does not change. */
const FINISHED = new Set(["completed", "failed", "cancelled"]);

/**
 * Whether a job is finished. Compared without case: the server sends
 * `completed`, and a document that spelled the enum `Completed` once must
 * not make the client wait forever.
 */
export function isFinished(job: Pick<Job, "status">): boolean {
  return FINISHED.has(String(job.status).toLowerCase());
}

/** How `wait` polls. */
export interface WaitOptions extends CallOptions, Backoff {
  /** Give up (with {@link WaitTimeoutError}) after this many seconds (default 600). */
  timeoutSeconds?: number;
}

/** Query of a page of jobs. */
export interface ListJobs extends CallOptions {
  /** Only this agent's jobs. */
  agent_id?: string;
  /** Only jobs in this status. */
  status?: "pending" | "running" | "completed" | "failed" | "cancelled";
  limit?: number;
  cursor?: string;
}

/** `/v1/jobs`. */
export class Jobs {
  constructor(private readonly transport: Transport) {}

  /** One page of the organization's jobs, newest first; iterate it for all. */
  async list(query: ListJobs = {}): Promise<Page<Job>> {
    const { signal, ...q } = query;
    const answer = await this.transport.json<Answer<"/v1/jobs", "get">>("GET", "/v1/jobs", {
      query: q,
      signal,
    });
    return new Page<Job>(answer, (cursor) => this.list({ ...query, cursor }));
  }

  /** Every job of the organization (of one agent, in one status), a page at a time. */
  iterate(query: ListJobs = {}): AsyncGenerator<Job> {
    return paginate(() => this.list(query));
  }

  /** A job as it is now. */
  get(id: string, options: CallOptions = {}): Promise<Job> {
    return this.transport.data<Data<"/v1/jobs/{id}", "get">>("GET", "/v1/jobs/{id}", {
      params: { id },
      signal: options.signal,
    });
  }

  /** Cancels a pending or running job (409 `JOB_ALREADY_FINISHED` otherwise). */
  cancel(id: string, options: CallOptions = {}): Promise<Job> {
    return this.transport.data<Data<"/v1/jobs/{id}/cancel", "post">>("POST", "/v1/jobs/{id}/cancel", {
      params: { id },
      signal: options.signal,
    });
  }

  /**
   * Polls until the job is completed, failed or cancelled, and returns it
   * then (a failed job is returned, not thrown: its `error` says why).
   */
  async wait(id: string, options: WaitOptions = {}): Promise<Job> {
    const timeout = options.timeoutSeconds ?? 600;
    const deadline = Date.now() + timeout * 1000;
    for (let attempt = 0; ; attempt++) {
      const job = await this.get(id, options);
      if (isFinished(job)) return job;
      const delay = backoffDelay(attempt, options);
      if (Date.now() + delay > deadline) throw new WaitTimeoutError(id, timeout);
      await sleep(delay, options.signal);
    }
  }
}

/** An async invocation's job: its id, and waiting for or cancelling it. */
export class JobHandle {
  constructor(
    private readonly jobs: Jobs,
    /** `job_…` */
    readonly id: string,
    /** The status when accepted (`pending`). */
    readonly status: string,
  ) {}

  /** The job as it is now. */
  get(options: CallOptions = {}): Promise<Job> {
    return this.jobs.get(this.id, options);
  }

  /** Polls until it is finished; see {@link Jobs.wait}. */
  wait(options: WaitOptions = {}): Promise<Job> {
    return this.jobs.wait(this.id, options);
  }

  /** Cancels it. */
  cancel(options: CallOptions = {}): Promise<Job> {
    return this.jobs.cancel(this.id, options);
  }
}
