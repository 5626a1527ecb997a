"""A stdin agent: answers every line it reads with one line."""
import sys

print("ready", flush=True)
for line in sys.stdin:
    print(f"echo: {line.rstrip()}", flush=True)
