"""A chat agent on stdin, for the Instances API's interactive example
(`POST /instances/{org}/{id}/stdin` with {"input": "What is the weather like
today?\\n"}): it reads one message a line and answers each with one line.

The answers come from a few rules (greetings, the weather, the time, what it
is, thanks, goodbyes), so it needs no model, no network and no key; a message
no rule knows gets an answer saying what it can talk about. Deploy it with
"config": {"enable_http": false, "stdin_enabled": true}.
"""
import datetime
import re
import sys


def has(words, *wanted):
    return any(w in words for w in wanted)


def answer(message):
    """The reply to one message."""
    words = set(re.findall(r"[a-z']+", message.lower()))
    if not words:
        return "Say something and I will answer."
    if has(words, "weather", "rain", "raining", "sunny", "forecast", "temperature", "snow"):
        return (
            "I cannot look outside from my sandbox and I have no weather service to ask, "
            "so I cannot tell you; a forecast site for your town will know. "
            "I hope it is a fine day where you are!"
        )
    if has(words, "time", "date", "day", "today") and not has(words, "how"):
        now = datetime.datetime.now(datetime.timezone.utc)
        return f"It is {now:%H:%M} UTC on {now:%A, %d %B %Y}."
    if has(words, "bye", "goodbye", "quit", "exit"):
        return "Goodbye! Send another line whenever you want to talk again."
    if has(words, "thanks", "thank", "cheers"):
        return "You are welcome!"
    if has(words, "who", "name") or {"what", "you"} <= words and not has(words, "can", "do"):
        return "I am a small rule-based chat agent running on Hangar, answering one line at a time."
    if has(words, "help") or {"what", "can", "you"} <= words:
        return "I can greet you, tell the time, say what I am, and admit I know nothing about the weather."
    if has(words, "hello", "hi", "hey", "morning", "evening"):
        return "Hello! Ask me the time, what I am, or what I can do."
    if has(words, "how") and has(words, "you"):
        return "I am running fine, thank you: one line in, one line out."
    return "I do not know about that yet; I can tell the time, say what I am, or greet you. Try \"help\"."


print("INFO chat agent ready: one message a line on stdin", flush=True)
for line in sys.stdin:
    print(answer(line.strip()), flush=True)
