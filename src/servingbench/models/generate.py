"""Greedy decoding of a next-token model (zoo ``gpt``), the same in every server and in-process.

A next-token model maps a fixed window of ``context`` token ids, ``(batch, context)`` int64, to the logits of the
next token, ``(batch, vocab)`` float32.  Decoding appends the argmax and slides the window by one token, ``n``
times.  Servers call :func:`iter_greedy` with their own ``step`` (the loaded runtime's ``predict``) and stream each
step's tokens; the harness verifies the streamed sequence against :func:`greedy` run in-process on the same prompt.

Greedy decoding is exact only while no step's two best logits are closer than the numerical noise between two
runtimes (thread counts, formats, batch sizes: ~1e-6 here).  :func:`min_margin` measures the smallest top-two gap
over a decoding; the zoo's reference prompts are checked to keep it far above the model's tolerance, so a server
that streams a different token is wrong, not unlucky.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

Step = Callable[[np.ndarray], np.ndarray]


def _check_prompt(prompt: np.ndarray) -> np.ndarray:
    prompt = np.asarray(prompt)
    if prompt.ndim != 2 or np.dtype(prompt.dtype).kind not in "iu":
        raise ValueError(f"a prompt is (batch, context) integer token ids, got shape {prompt.shape} "
                         f"dtype {prompt.dtype}")
    return prompt.astype(np.int64, copy=False)


def iter_greedy(step: Step, prompt: np.ndarray, n: int) -> Iterator[np.ndarray]:
    """Yield ``n`` arrays of ``batch`` next tokens (int64), one per decoding step, as they are decided."""
    window = _check_prompt(prompt).copy()
    if n < 1:
        raise ValueError(f"the number of new tokens must be >= 1, got {n}")
    for _ in range(n):
        logits = np.asarray(step(window))
        if logits.ndim != 2 or logits.shape[0] != window.shape[0]:
            raise ValueError(f"a next-token model returns (batch, vocab) logits, got shape {logits.shape}")
        nxt = logits.argmax(axis=1).astype(np.int64)
        window = np.concatenate([window[:, 1:], nxt[:, None]], axis=1)
        yield nxt


def greedy(step: Step, prompt: np.ndarray, n: int) -> np.ndarray:
    """The ``(batch, n)`` tokens greedy decoding produces from ``prompt``."""
    return np.stack(list(iter_greedy(step, prompt, n)), axis=1)


def min_margin(step: Step, prompt: np.ndarray, n: int) -> float:
    """The smallest gap between the best and second-best logit over every step and row of the decoding."""
    margins: list[float] = []

    def watched(window: np.ndarray) -> np.ndarray:
        logits = np.asarray(step(window))
        top2 = np.sort(logits, axis=1)[:, -2:]
        margins.append(float((top2[:, 1] - top2[:, 0]).min()))
        return logits

    greedy(watched, prompt, n)
    return min(margins)


def first_divergence(got: list[int] | np.ndarray, expected: list[int] | np.ndarray) -> int | None:
    """Index of the first token where a streamed sequence differs from the reference (a missing or extra token
    counts at the shorter length), or None when they are equal."""
    got, expected = list(map(int, got)), list(map(int, expected))
    for i, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            return i
    return None if len(got) == len(expected) else min(len(got), len(expected))
