// Packing a folder in the browser, for deploying one dropped (or chosen) as
// a directory: a ustar archive of its files, gzipped with the browser's own
// CompressionStream — the same .tar.gz `hangar deploy` uploads.

/** Folders that are never part of an agent's source. */
const SKIP = new Set([".git", "node_modules", "__pycache__", ".venv", "target"]);

/** Whether `path` (relative, `/`-separated) lies in a skipped folder. */
export const skipped = (path) => path.split("/").slice(0, -1).some((part) => SKIP.has(part));

/** The files under a dropped directory entry, as `{path, file}` relative to it. */
export async function filesOf(directory) {
  const out = [];
  async function walk(entry, prefix) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ path: prefix + entry.name, file });
      return;
    }
    if (SKIP.has(entry.name)) return;
    const reader = entry.createReader();
    // readEntries answers in batches until it answers none.
    for (;;) {
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) await walk(child, `${prefix}${entry === directory ? "" : `${entry.name}/`}`);
    }
  }
  await walk(directory, "");
  return out;
}

const encoder = new TextEncoder();

function header(path, size, mtime) {
  const block = new Uint8Array(512);
  const put = (offset, length, text) => block.set(encoder.encode(text).slice(0, length), offset);
  const octal = (n, length) => `${n.toString(8).padStart(length - 1, "0")}\0`;
  let name = path;
  let prefix = "";
  if (encoder.encode(path).length > 100) {
    const cut = path.lastIndexOf("/", 155);
    if (cut <= 0 || encoder.encode(path.slice(cut + 1)).length > 100) throw new Error(`${path}: name too long for an archive`);
    prefix = path.slice(0, cut);
    name = path.slice(cut + 1);
  }
  put(0, 100, name);
  put(100, 8, "0000644\0");
  put(108, 8, octal(0, 8));
  put(116, 8, octal(0, 8));
  put(124, 12, octal(size, 12));
  put(136, 12, octal(Math.floor(mtime / 1000), 12));
  put(148, 8, "        ");
  put(156, 1, "0");
  put(257, 6, "ustar\0");
  put(263, 2, "00");
  put(345, 155, prefix);
  const sum = block.reduce((a, b) => a + b, 0);
  put(148, 8, `${sum.toString(8).padStart(6, "0")}\0 `);
  return block;
}

/** A `.tar.gz` File named `name.tar.gz` of `files` (`{path, file}`). */
export async function tarGz(name, files) {
  const parts = [];
  for (const { path, file } of files) {
    if (skipped(path)) continue;
    parts.push(header(path, file.size, file.lastModified || Date.now()), file, new Uint8Array((512 - (file.size % 512)) % 512));
  }
  parts.push(new Uint8Array(1024));
  const gzipped = new Blob(parts).stream().pipeThrough(new CompressionStream("gzip"));
  return new File([await new Response(gzipped).blob()], `${name}.tar.gz`, { type: "application/gzip" });
}
