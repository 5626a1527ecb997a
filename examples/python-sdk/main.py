"""A text agent written with the SDK's agent helper (`hangar.agent`): no web
framework, only the standard library at run time.

- invoke `{"text": "..."}` → `{"words": n, "longest": "...", "summary": "..."}`;
- the same asked for as a stream → the summary word by word, then its usage;
- stdin: one line in, the line's word count and first word out;
- health: ready once its (tiny) lexicon is loaded.

Deploy it with the helper beside it: the `hangar/` directory of `sdk/python`
(see the SDK's README).
"""

from hangar import agent

STOP_WORDS = {"a", "an", "and", "the", "of", "to", "in", "is", "it", "on", "for"}
lexicon = {}


def load():
    # Stands in for loading a model: health says ready once it is done.
    lexicon.update({w: True for w in STOP_WORDS})


def summary(text):
    words = [w.strip(".,;:!?") for w in text.split()]
    kept = [w for w in words if w and w.lower() not in lexicon]
    return words, kept[:8]


@agent.invoke
def answer(input):
    text = (input or {}).get("text", "")
    words, kept = summary(text)
    agent.log.info("summarized", words=len(words))
    return {
        "output": {
            "words": len(words),
            "longest": max(words, key=len) if words else "",
            "summary": " ".join(kept),
        },
        "usage": {"words": len(words)},
    }


@agent.stream
def answer_stream(input):
    words, kept = summary((input or {}).get("text", ""))
    for word in kept:
        yield word + " "
    return {"words": len(words)}


@agent.stdin
def line(text):
    words = text.split()
    return f"{len(words)} words, first: {words[0] if words else '-'}"


@agent.health
def ready():
    return bool(lexicon)


if __name__ == "__main__":
    load()
    agent.run()
