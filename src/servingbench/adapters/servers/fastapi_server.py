"""A plain FastAPI server for servingbench models: the no-framework baseline.  Run by uvicorn
(``uvicorn fastapi_server:app``) with ``SB_FASTAPI_CONFIG`` naming its ``deployment.json``.

``blocking: false``: inference runs in FastAPI's thread pool (``anyio.to_thread.run_sync``); ``blocking: true``:
inline in the ``async`` endpoint, blocking the event loop (the common mistake this baseline measures).

``POST /generate/<model>`` with ``{"inputs": [[token ids]], "max_tokens": n}`` streams a generative model's greedy
decoding (zoo ``gpt``) as newline-delimited JSON, one ``{"token": id}`` per step, through a ``StreamingResponse``
whose async generator yields each token as soon as it is decided (each step in the thread pool, or inline when
blocking).

An image or text payload model (``servingbench.models.preprocess``) takes ``{"inputs": [base64 JPEG files or
strings]}``; the shared ``Preprocessor`` turns them into the input tensor in the same place as inference (the
thread pool, or inline when blocking).
"""

import hmac
import json
import os

import anyio
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from servingbench.models.generate import iter_greedy
from servingbench.models.preprocess import PayloadError, load_preprocessor
from servingbench.models.runtime import load_runtime

with open(os.environ["SB_FASTAPI_CONFIG"]) as f:
    CFG = json.load(f)
TOKEN = os.environ.get("SB_FASTAPI_TOKEN")
app = FastAPI()
RUNTIMES = {m["name"]: load_runtime(m["dir"], fmt=CFG["model_format"], device=CFG["device"], threads=CFG["threads"])
            for m in CFG["models"]}
DTYPES = {name: np.dtype(rt.spec.input.dtype) for name, rt in RUNTIMES.items()}
PREPROCESS = {m["name"]: load_preprocessor(m["dir"]) for m in CFG["models"]}  # None: a tensor payload


@app.on_event("startup")
async def _pool() -> None:
    if CFG.get("pool_threads"):
        anyio.to_thread.current_default_thread_limiter().total_tokens = CFG["pool_threads"]


async def check_token(request: Request) -> None:  # async: no thread-pool hop per request
    if not CFG["auth"]:
        return
    got = request.headers.get("authorization", "")
    if not TOKEN or not hmac.compare_digest(got.encode(), f"Bearer {TOKEN}".encode()):
        raise HTTPException(status_code=401, detail="missing or wrong token")


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


async def _inputs(model: str, request: Request) -> tuple:
    rt = RUNTIMES.get(model)
    if rt is None:
        raise HTTPException(status_code=404, detail=f"no model {model!r}")
    try:
        body = await request.json()
        if PREPROCESS[model] is not None:  # decoded with the model, in _run
            if not isinstance(body["inputs"], list):
                raise ValueError("inputs must be a list of items")
            return rt, body["inputs"], body
        x = np.asarray(body["inputs"], dtype=DTYPES[model])
        if x.ndim != 1 + len(rt.spec.input.shape) or tuple(x.shape[1:]) != tuple(rt.spec.input.shape):
            raise ValueError(f"inputs have shape {list(x.shape)}, expected [batch, {', '.join(map(str, rt.spec.input.shape))}]")
    except (ValueError, KeyError, TypeError) as e:
        raise HTTPException(status_code=400, detail=f"bad request: {e}") from None
    return rt, x, body


@app.post("/generate/{model}", dependencies=[Depends(check_token)])
async def generate(model: str, request: Request) -> StreamingResponse:
    rt, x, body = await _inputs(model, request)
    steps = iter_greedy(rt.predict, x[:1], int(body.get("max_tokens", 1)))

    async def tokens():
        while True:
            tok = next(steps, None) if CFG["blocking"] else await anyio.to_thread.run_sync(next, steps, None)
            if tok is None:
                return
            yield json.dumps({"token": int(tok[0])}) + "\n"

    return StreamingResponse(tokens(), media_type="application/x-ndjson")


@app.post("/predict/{model}", dependencies=[Depends(check_token)])
async def predict(model: str, request: Request) -> dict:
    rt, x, _ = await _inputs(model, request)
    if CFG["blocking"]:
        out = _run(model, rt, x)  # blocks the event loop: the baseline of the common mistake
    else:
        out = await anyio.to_thread.run_sync(_run, model, rt, x)
    return {"outputs": out.tolist()}


def _run(model: str, rt, x):
    """Preprocess (an image or text payload) and run the model."""
    if PREPROCESS[model] is not None:
        try:
            x = PREPROCESS[model](x)
        except PayloadError as e:
            raise HTTPException(status_code=400, detail=f"bad request: {e}") from None
    return rt.predict(x)
