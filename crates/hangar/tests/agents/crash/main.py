"""An agent that crashes a moment after it starts."""
import sys
import time

print("ERROR about to crash", flush=True)
time.sleep(0.2)
sys.exit(3)
