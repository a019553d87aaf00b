"""The Python side of the Node.js producer example: `redwork worker tasks:app`.

Tasks are registered under short explicit names, so the producer in another language
names them without knowing this module's import path."""

from __future__ import annotations

from redwork import Redwork

app = Redwork("node-producer")


@app.task(name="square")
def square(n: int) -> int:
    return n * n


@app.task(name="greet")
def greet(name: str, greeting: str = "Hello", punctuation: str = "!") -> str:
    return f"{greeting}, {name}{punctuation}"


@app.task(name="divide")
def divide(a: float, b: float) -> float:
    return a / b  # b = 0 raises: the producer sees the job fail with its reason
