"""Hangar's Python SDK.

What is here: :mod:`hangar.agent`, which serves Hangar's agent contract (HTTP
invoke, streaming, health, stdin, logs, graceful stop) with the standard
library only, so an agent needs no web framework at run time::

    from hangar import agent

    @agent.invoke
    def answer(input: dict) -> dict:
        return {"echo": input}

    agent.run()

What is not here yet: the API client (``hangar.Client``). Until it is, call
the HTTP API directly (its OpenAPI document is served at ``/openapi.json``).
"""

__version__ = "0.1.0"
