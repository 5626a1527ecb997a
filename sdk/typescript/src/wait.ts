/**
 * Waiting: an abortable sleep, and the backoff a poll follows (a short first
 * wait, growing by half each time up to a ceiling), so a job that ends fast
 * is seen fast and a long one costs few requests.
 */

/** Resolves after `ms`, or rejects with the signal's reason when aborted. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** How a poll backs off. */
export interface Backoff {
  /** First wait, ms (default 250). */
  initialMs?: number;
  /** Longest wait, ms (default 5000). */
  maxMs?: number;
  /** Growth per poll (default 1.5). */
  factor?: number;
}

/** The wait before poll number `attempt` (0 for the first). */
export function backoffDelay(attempt: number, backoff: Backoff = {}): number {
  const initial = backoff.initialMs ?? 250;
  const max = backoff.maxMs ?? 5000;
  const factor = backoff.factor ?? 1.5;
  return Math.min(max, initial * factor ** attempt);
}
