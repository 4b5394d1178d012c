"""A tiny server that answers inference requests with garbage of a chosen kind (fault-injection tests only)."""

import json
import sys

import uvicorn

MODE = sys.argv[2]
BODIES = {
    "notjson": b"<html>oops</html>",
    "shape": json.dumps({"outputs": [[1.0, 2.0]]}).encode(),
    "nan": json.dumps({"outputs": [[float("nan")] * 10]}).encode().replace(b"NaN", b"NaN"),
    "truncated": b'{"outputs": [[0.1, 0.2, 0.3',
    "mixed": None,
}
_n = 0


async def app(scope, receive, send):
    global _n
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    if scope["path"] == "/health":
        body = b"ok"
    elif MODE == "mixed":
        _n += 1
        body = [BODIES["notjson"], BODIES["shape"], BODIES["nan"], BODIES["truncated"]][_n % 4]
    else:
        body = BODIES[MODE]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
