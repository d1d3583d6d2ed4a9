#!/usr/bin/env python3
"""Example agent in the seed's style (`./agents/weather_agent.py`): a WebSocket agent built on the
`websockets` package (pip install websockets). It answers questions about the weather with canned
data and keeps a small per-session memory.

myagent-manager launches it with MYAGENT_HOST, MYAGENT_PORT, MYAGENT_SERVICE_ID,
MYAGENT_SERVICE_NAME, MYAGENT_MAX_SESSIONS and MYAGENT_SESSION_TIMEOUT in the environment.
Messages from the proxy arrive wrapped as {"proxy_metadata": {...}, "original_message": ...};
the agent unwraps them and replies with plain JSON.
"""

import asyncio
import json
import logging
import os
import random

import websockets

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger(os.environ.get("MYAGENT_SERVICE_NAME", "weather-agent"))

CITIES = {
    "beijing": ("Beijing", "sunny", 23),
    "shanghai": ("Shanghai", "cloudy", 26),
    "london": ("London", "rainy", 14),
    "new york": ("New York", "windy", 18),
}
SESSIONS = {}


def answer(session_id, text):
    memory = SESSIONS.setdefault(session_id, [])
    memory.append(text)
    lowered = text.lower()
    for key, (city, sky, temp) in CITIES.items():
        if key in lowered:
            return {"type": "weather", "city": city, "condition": sky,
                    "temperature_c": temp + random.randint(-2, 2), "turn": len(memory)}
    return {"type": "text", "text": "Ask me about the weather in Beijing, Shanghai, London or New York.",
            "turn": len(memory)}


async def handle(ws):
    path = getattr(getattr(ws, "request", None), "path", "") or ""
    session_id = "anonymous"
    if "session_id=" in path:
        session_id = path.split("session_id=", 1)[1].split("&", 1)[0]
    log.info("session %s connected", session_id)
    try:
        async for raw in ws:
            if isinstance(raw, bytes):
                await ws.send(raw)
                continue
            try:
                msg = json.loads(raw)
            except ValueError:
                msg = raw
            if isinstance(msg, dict) and "original_message" in msg:
                msg = msg["original_message"]
            text = msg.get("text", json.dumps(msg)) if isinstance(msg, dict) else str(msg)
            await ws.send(json.dumps(answer(session_id, text)))
    except websockets.ConnectionClosed:
        pass
    finally:
        log.info("session %s disconnected", session_id)


async def main():
    host = os.environ.get("MYAGENT_HOST", "localhost")
    port = int(os.environ.get("MYAGENT_PORT", "8081"))
    async with websockets.serve(handle, host, port):
        log.info("weather agent listening on ws://%s:%s", host, port)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
