-- The blob store in the database (`blobs = "store"`): uploads' archives and
-- build artifacts that every server on this database must be able to read.
-- A blob is a list of content-addressed chunks; chunks are shared between
-- blobs of the same bytes and never rewritten, so a reader never sees a
-- chunk change under it. A blob's parts and its row are written in one
-- transaction, after its chunks: a blob is there whole or not at all.
CREATE TABLE blob_chunks (
    hash TEXT PRIMARY KEY,
    data BYTEA NOT NULL
);

CREATE TABLE blobs (
    key TEXT PRIMARY KEY,
    size_bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE blob_parts (
    blob_key TEXT NOT NULL,
    seq BIGINT NOT NULL,
    chunk_hash TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    PRIMARY KEY (blob_key, seq)
);
