"""The agent the client's tests deploy (with the helper, `hangar/`, beside it):

- invoke `{"text": ...}` → `{"upper": ..., "length": n}`; `{"sleep": s}` sleeps
  first (a job to cancel); `{"log": n, "tag": t}` writes the log lines `t 0`…`t n-1`;
- the same as a stream: the words one by one, then the usage `{"words": n}`;
- stdin: a line in, the line reversed out.
"""

import time

from hangar import agent


@agent.invoke
def answer(input):
    time.sleep(float(input.get("sleep", 0)))
    for i in range(int(input.get("log", 0))):
        agent.log.info(f"{input.get('tag', 'line')} {i}")
    text = input.get("text", "")
    return {"output": {"upper": text.upper(), "length": len(text)}, "usage": {"chars": len(text)}}


@agent.stream
def words(input):
    words = input.get("text", "").split()
    for word in words:
        yield word
    return {"words": len(words)}


@agent.stdin
def reverse(line):
    return line[::-1]


if __name__ == "__main__":
    agent.run()
