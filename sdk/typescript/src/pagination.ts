/**
 * Cursor pagination of the list endpoints (`{data, pagination: {has_more,
 * next_cursor}}` in both APIs): a {@link Page} is one answer, and
 * {@link paginate} walks every page as one async iterator, asking for the
 * next page only when the caller has used up the current one.
 */

/** The shape every paginated answer has. */
export interface PageAnswer<T> {
  data: T[];
  pagination: { limit?: number; has_more: boolean; next_cursor?: string | null };
}

/** One page of a list. */
export class Page<T> implements AsyncIterable<T> {
  /** The items of this page, newest first. */
  readonly data: T[];
  /** Whether another page follows. */
  readonly hasMore: boolean;
  /** Pass as `cursor` for the next page. */
  readonly nextCursor: string | undefined;
  private readonly fetchPage: (cursor: string) => Promise<Page<T>>;

  constructor(answer: PageAnswer<T>, fetchPage: (cursor: string) => Promise<Page<T>>) {
    this.data = answer.data;
    this.hasMore = answer.pagination.has_more;
    this.nextCursor = answer.pagination.next_cursor ?? undefined;
    this.fetchPage = fetchPage;
  }

  /** The next page, or `undefined` after the last. */
  async nextPage(): Promise<Page<T> | undefined> {
    return this.hasMore && this.nextCursor ? this.fetchPage(this.nextCursor) : undefined;
  }

  /** Every item from this page on, across pages. */
  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    let page: Page<T> | undefined = this;
    while (page) {
      yield* page.data;
      page = await page.nextPage();
    }
  }
}

/** Every item of a list, fetched a page at a time as it is iterated. */
export async function* paginate<T>(first: () => Promise<Page<T>>): AsyncGenerator<T> {
  yield* await first();
}
