#!/usr/bin/env python3
"""Regenerates what the SDK derives from elsewhere; ``--check`` only compares.

1. ``hangar/_models.py``: the OpenAPI document's schemas as ``TypedDict`` s,
   by datamodel-code-generator (the version pinned below, so the same
   document gives the same file), from ``sdk/openapi.json``.
2. ``hangar/_async.py``: :class:`AsyncClient`, from the hand-written
   ``hangar/_sync.py`` by rewriting it with ``async``/``await`` (the way
   httpcore's unasync does), so the two clients cannot drift apart.

Run it (from anywhere) with a Python that has ``datamodel-code-generator``::

    pip install 'datamodel-code-generator==0.89.0' httpx
    python sdk/python/scripts/generate.py           # rewrite both files
    python sdk/python/scripts/generate.py --check   # exit 1 if either is stale
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

GENERATOR = "datamodel-code-generator"
GENERATOR_VERSION = "0.89.0"

HERE = Path(__file__).resolve().parent.parent  # sdk/python
DOCUMENT = HERE.parent / "openapi.json"
MODELS = HERE / "hangar" / "_models.py"
SYNC = HERE / "hangar" / "_sync.py"
ASYNC = HERE / "hangar" / "_async.py"

#: The generator's arguments, after --input and --output.
ARGS = [
    "--input-file-type", "openapi",
    "--output-model-type", "typing.TypedDict",
    "--target-python-version", "3.10",
    "--use-schema-description",
    "--reuse-model",
    "--disable-timestamp",
    "--formatters", "builtin",
]

COMMAND = (f"datamodel-codegen --input sdk/openapi.json --output sdk/python/hangar/_models.py "
           + " ".join(ARGS))


def models() -> str:
    """``_models.py`` as the pinned generator writes it from the document."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version(GENERATOR)
    except PackageNotFoundError:
        sys.exit(f"{GENERATOR} is not installed: pip install '{GENERATOR}=={GENERATOR_VERSION}'")
    if found != GENERATOR_VERSION:
        sys.exit(f"{GENERATOR} {found} is installed; the models are made with {GENERATOR_VERSION}: "
                 f"pip install '{GENERATOR}=={GENERATOR_VERSION}'")
    codegen = Path(sys.executable).parent / "datamodel-codegen"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "_models.py"
        subprocess.run([str(codegen) if codegen.exists() else "datamodel-codegen",
                        "--input", str(DOCUMENT), "--output", str(out), *ARGS],
                       check=True, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        body = out.read_text(encoding="utf-8")
    # The generator's own header names the temporary input file's name only.
    body = re.sub(r"\A(#[^\n]*\n)+\n*", "", body)
    header = (
        '"""The OpenAPI document\'s schemas as ``TypedDict`` s (types for type checkers;\n'
        "at run time the client's answers are plain dicts).\n\n"
        f"Generated from ``sdk/openapi.json`` by {GENERATOR} {GENERATOR_VERSION}: do not edit.\n"
        "Regenerate with ``python sdk/python/scripts/generate.py``, which runs::\n\n"
        f"    {COMMAND}\n"
        '"""\n\n'
        "# ruff: noqa\n"
    )
    return header + body


def _async_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Names of the methods that become coroutines, and of those that become
    async generators (``yield`` in their body)."""
    lines = SYNC.read_text(encoding="utf-8").splitlines()
    coroutines, generators = set(), set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        if node.name.startswith("__") or "# no-io" in lines[node.lineno - 1] or any(
                isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list):
            continue
        own = [n for n in ast.walk(node) if isinstance(n, (ast.Yield, ast.YieldFrom))]
        (generators if own else coroutines).add(node.name)
    return coroutines, generators


def unasync() -> str:
    """``_async.py``: ``_sync.py`` rewritten with ``async``/``await``."""
    source = SYNC.read_text(encoding="utf-8")
    coroutines, generators = _async_names(ast.parse(source))
    # Calls awaited: methods of the client, of its resources (`self.agents`,
    # `self._client.jobs`), of a resource itself, and of a job.
    resources = "|".join(sorted(set(re.findall(r"self\.(\w+) = \w+\(self\)", source))))
    receivers = rf"self\._client\.(?:{resources})|self\._client|self\.(?:{resources})|self|job"
    out = []
    previous = ""
    for line in source.splitlines():
        stripped = line.strip()
        m = re.match(r"(\s*)def (\w+)\(", line)
        if m and "# no-io" not in line and previous.strip() != "@property" and not m.group(2).startswith("__init"):
            line = line.replace("def ", "async def ", 1)
        line = re.sub(r"\bdef __enter__\b", "def __aenter__", line)
        line = re.sub(r"\bdef __exit__\b", "def __aexit__", line)
        # Iterating over an own generator, or a response's lines.
        m = re.match(r"(\s*)for (.+) in (self[\w.]*)\.(\w+)\(", line)
        is_for = bool(m and m.group(4) in generators)
        if is_for:
            line = line.replace("for ", "async for ", 1)
        if re.match(r"\s*for \w+ in response\.iter_lines\(\)", line):
            line = line.replace("for ", "async for ", 1).replace(".iter_lines()", ".aiter_lines()")
            is_for = True
        if re.match(r"\s*with self\.(_client\._stream|_stream|_http\.stream)\(", line):
            line = line.replace("with ", "async with ", 1)
        if not is_for:
            line = re.sub(
                rf"(?<![\w.])({receivers})\.(\w+)\(",
                lambda m: f"await {m.group(1)}.{m.group(2)}(" if m.group(2) in coroutines else m.group(0),
                line,
            )
        line = line.replace("self._http.request(", "await self._http.request(")
        line = line.replace("self._http.close()", "await self._http.aclose()")
        line = line.replace("response.read()", "await response.aread()")
        line = line.replace("time.sleep(", "await asyncio.sleep(")
        line = line.replace("@contextlib.contextmanager", "@contextlib.asynccontextmanager")
        line = re.sub(r"\bIterator\b", "AsyncIterator", line)
        line = re.sub(r"\b(Client|Job)\b", r"Async\1", line)
        out.append(line)
        previous = stripped and line or previous
    text = "\n".join(out) + "\n"
    # The module's docstring is the sync file's: say what this one is instead.
    text = re.sub(r'\A""".*?"""', '"""The async API client: :class:`AsyncClient`, the same as :class:`~hangar.Client`\n'
                  "with ``await`` (an ``async for`` over iterators).\n\n"
                  "Generated from ``_sync.py`` by ``scripts/generate.py``: do not edit; change\n"
                  '``_sync.py`` and run ``python sdk/python/scripts/generate.py``.\n"""',
                  text, count=1, flags=re.S)
    text = text.replace("import contextlib\n", "import asyncio\nimport contextlib\n", 1)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is stale")
    args = parser.parse_args()
    stale = []
    for path, make in ((MODELS, models), (ASYNC, unasync)):
        want = make()
        have = path.read_text(encoding="utf-8") if path.exists() else None
        if have == want:
            continue
        if args.check:
            stale.append(path.name)
        else:
            path.write_text(want, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE)}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python sdk/python/scripts/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
