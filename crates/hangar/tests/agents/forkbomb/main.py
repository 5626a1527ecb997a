"""A fork bomb: forks until the pids limit stops it, then keeps trying."""
import os
import time

print("INFO forking", flush=True)
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
