"""A sentiment analyzer built with langchain-core: the Agents API's example agent
("sentiment-analyzer", framework "langchain").

POST /invoke with {"text": …, "language": "en"} (or {"document": …}, or a bare
string) answers the Agents API's sentiment object:

    {"output": {"sentiment": "positive", "confidence": 0.95,
                "emotions": {"joy": 0.69, "love": 0.63, "surprise": 0.15}},
     "usage": {"tokens_used": 10, "compute_ms": 1}}

The analysis is a LangChain runnable chain (tokenize → score polarity and
emotions in parallel → verdict) over a small English lexicon, so it needs no
network, no model and no key, and the same text always gets the same answer.
A language other than English answers 422; an input without text, 400.
"""
import json
import math
import os
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from langchain_core.runnables import RunnableLambda, RunnableParallel

# Word → (valence from -3 to 3, {emotion: weight}). Small on purpose: enough for
# reviews and chat lines, and readable in one screen.
LEXICON = {
    "love": (3, {"love": 2, "joy": 1}),
    "loved": (3, {"love": 2, "joy": 1}),
    "loves": (3, {"love": 2, "joy": 1}),
    "adore": (3, {"love": 2, "joy": 1}),
    "best": (3, {"joy": 2}),
    "excellent": (3, {"joy": 2}),
    "amazing": (3, {"joy": 1.5, "surprise": 1}),
    "awesome": (3, {"joy": 2}),
    "perfect": (3, {"joy": 2}),
    "wonderful": (3, {"joy": 2}),
    "fantastic": (3, {"joy": 2}),
    "great": (2, {"joy": 1.5}),
    "good": (2, {"joy": 1}),
    "happy": (2, {"joy": 2}),
    "glad": (2, {"joy": 1.5}),
    "nice": (2, {"joy": 1}),
    "like": (1, {"joy": 0.5}),
    "enjoy": (2, {"joy": 1.5}),
    "recommend": (2, {"joy": 1}),
    "thanks": (1, {"joy": 0.5}),
    "fine": (1, {}),
    "ok": (0.5, {}),
    "surprised": (0, {"surprise": 2}),
    "unexpected": (0, {"surprise": 1.5}),
    "wow": (1, {"surprise": 2}),
    "bad": (-2, {"sadness": 1}),
    "poor": (-2, {"sadness": 1}),
    "worse": (-2, {"sadness": 1, "anger": 0.5}),
    "worst": (-3, {"anger": 1.5, "sadness": 1}),
    "terrible": (-3, {"anger": 1, "sadness": 1}),
    "awful": (-3, {"anger": 1, "sadness": 1}),
    "horrible": (-3, {"anger": 1, "fear": 0.5}),
    "hate": (-3, {"anger": 2}),
    "hated": (-3, {"anger": 2}),
    "angry": (-2, {"anger": 2}),
    "annoying": (-2, {"anger": 1.5}),
    "broken": (-2, {"anger": 1, "sadness": 0.5}),
    "broke": (-2, {"anger": 1, "sadness": 0.5}),
    "useless": (-2, {"anger": 1}),
    "disappointed": (-2, {"sadness": 2}),
    "disappointing": (-2, {"sadness": 2}),
    "sad": (-2, {"sadness": 2}),
    "slow": (-1, {"anger": 0.5}),
    "refund": (-1, {"anger": 0.5}),
    "afraid": (-2, {"fear": 2}),
    "scared": (-2, {"fear": 2}),
    "worried": (-1, {"fear": 1.5}),
    "dangerous": (-2, {"fear": 2}),
}
INTENSIFIERS = {"absolutely": 1.5, "really": 1.3, "very": 1.3, "so": 1.2, "extremely": 1.6, "totally": 1.4}
NEGATIONS = {"not", "no", "never", "don't", "didn't", "isn't", "wasn't", "doesn't", "can't", "won't"}
EMOTIONS = ("joy", "love", "surprise", "anger", "sadness", "fear")
# How far a score is pulled towards ±1 (as VADER normalizes its sums).
ALPHA = 15
# |polarity| below this is neutral.
NEUTRAL_BAND = 0.05


def read_text(body):
    """The text to analyze: `text`, else `document`, else the body itself."""
    if isinstance(body, str):
        return body
    if isinstance(body, dict):
        language = body.get("language", "en")
        if language != "en":
            raise Rejected(422, f"language {language!r} is not supported: this analyzer knows English (\"en\")")
        for field in ("text", "document"):
            if isinstance(body.get(field), str):
                return body[field]
    raise Rejected(400, 'send {"text": "…"} (or {"document": "…"}, or a JSON string)')


def tokenize(text):
    """Words (with their apostrophes) and every other non-space character."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", text.lower())


def polarity(tokens):
    """The summed valence, negation flipping and intensifiers scaling the next
    sentiment word; each `!` strengthens whatever the text leans to."""
    score, scale, negated = 0.0, 1.0, False
    for token in tokens:
        if token in INTENSIFIERS:
            scale *= INTENSIFIERS[token]
        elif token in NEGATIONS:
            negated = True
        elif token in LEXICON:
            valence = LEXICON[token][0] * scale
            score += -0.5 * valence if negated else valence
            scale, negated = 1.0, False
    exclamations = tokens.count("!")
    if score:
        score += math.copysign(0.3 * min(exclamations, 3), score)
    return score / math.sqrt(score * score + ALPHA)


def emotions(tokens):
    """Each emotion's weight from the words that carry it (not when negated),
    squashed into 0..1; only the emotions present."""
    weights = dict.fromkeys(EMOTIONS, 0.0)
    scale, negated = 1.0, False
    for token in tokens:
        if token in INTENSIFIERS:
            scale *= INTENSIFIERS[token]
        elif token in NEGATIONS:
            negated = True
        elif token in LEXICON:
            if not negated:
                for emotion, weight in LEXICON[token][1].items():
                    weights[emotion] += weight * scale
            scale, negated = 1.0, False
    weights["surprise"] += 0.5 * min(tokens.count("!"), 3)
    found = {e: round(1 - math.exp(-w / 3), 2) for e, w in weights.items() if w > 0}
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def verdict(scored):
    p = scored["polarity"]
    if p >= NEUTRAL_BAND:
        sentiment, confidence = "positive", 0.5 + p / 2
    elif p <= -NEUTRAL_BAND:
        sentiment, confidence = "negative", 0.5 - p / 2
    else:
        sentiment, confidence = "neutral", 1 - abs(p) / NEUTRAL_BAND / 2
    return {
        "output": {"sentiment": sentiment, "confidence": round(confidence, 2), "emotions": scored["emotions"]},
        "tokens": scored["tokens"],
    }


# The chain: text → tokens → (polarity, emotions, count) → the sentiment object.
analyzer = (
    RunnableLambda(read_text)
    | RunnableLambda(tokenize)
    | RunnableParallel(polarity=RunnableLambda(polarity), emotions=RunnableLambda(emotions), tokens=RunnableLambda(len))
    | RunnableLambda(verdict)
)


class Rejected(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Agent(BaseHTTPRequestHandler):
    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/invoke":
            self._reply(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            self._reply(400, {"error": "the body is not JSON"})
            return
        started = time.perf_counter()
        try:
            result = analyzer.invoke(body)
        except Rejected as rejected:
            print(f"WARN rejected an input: {rejected}", flush=True)
            self._reply(rejected.status, {"error": str(rejected)})
            return
        compute_ms = round((time.perf_counter() - started) * 1000)
        output = result["output"]
        print(
            f"INFO analyzed {result['tokens']} tokens: {output['sentiment']} ({output['confidence']})",
            flush=True,
        )
        self._reply(200, {"output": output, "usage": {"tokens_used": result["tokens"], "compute_ms": compute_ms}})

    def log_message(self, fmt, *args):
        # Each analysis logs its own line; health checks every few seconds
        # would drown them.
        pass


port = int(os.environ.get("PORT", "8080"))
print(f"INFO sentiment analyzer listening on {port}", flush=True)
ThreadingHTTPServer(("0.0.0.0", port), Agent).serve_forever()
