"""An agent that allocates 400 MB, touching every page, then idles."""
import time

print("INFO allocating 400 MB", flush=True)
hog = bytearray(400 * 1024 * 1024)
for i in range(0, len(hog), 4096):
    hog[i] = 1
print("INFO allocated", flush=True)
while True:
    time.sleep(1)
