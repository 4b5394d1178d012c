"""Generator calibration: the load generator's own ceiling and latency floor against a trivial endpoint.

A minimal ASGI app under uvicorn (httptools) answers a fixed body; it is far cheaper per request than any model
server, so the closed-loop rate it reaches is what the generator itself can drive on its cores, and the latency at
one user is the floor that client + loopback add to every measurement.
Run the endpoint as ``python -m servingbench.measure.echo_server PORT``.
"""

from __future__ import annotations

import sys

BODY = b'{"outputs": [[0.0]]}'


async def app(scope, receive, send):  # a trivial ASGI endpoint
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    argv = sys.argv[1:] if argv is None else argv
    uvicorn.run(app, host="127.0.0.1", port=int(argv[0]), log_level="warning", access_log=False,
                http="httptools", loop="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
