"""A FastAPI app whose endpoint sends an ``async def`` task and awaits its result.

cd examples/fastapi
celeriac -A main worker -P asyncio      # the worker
uvicorn main:api                        # the web app (pip install uvicorn)
"""

import asyncio
import os

from fastapi import FastAPI

from celeriac import Celeriac

celery = Celeriac(
    "example", broker=os.environ.get("CELERIAC_BROKER_URL", "sqlite:///celeriac.sqlite3")
)


@celery.task
async def fetch_square(x: int) -> int:
    await asyncio.sleep(0.01)  # stands for awaiting an HTTP call or a database query
    return x * x


api = FastAPI()


@api.post("/square/{x}")
async def square(x: int) -> dict[str, int | str]:
    result = await fetch_square.adelay(x)  # the publish runs off the event loop
    value = await result.aget(timeout=20)  # so does the wait for the result
    return {"task_id": result.id, "value": value}
