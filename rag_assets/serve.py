"""`rag-assets serve`: the search as an HTTP JSON API, the model loaded once.

Starlette on uvicorn: both already come with dagster-webserver, and Starlette runs the plain (blocking)
endpoints below in its thread pool, so a slow query never stalls the event loop.

- `GET /search?q=...&k=5&shard=...`: the same JSON as `rag-assets search --json`;
  400 for an empty or missing query or a k outside 1..1000, 404 for a shard the collection does not hold.
- `GET /health`: {"status": "ok", "collection" (the alias), "physical_collection", "points", "model"}; 503
  when the collection cannot answer (also when the embedded engine stays locked by a writer for more than
  `search.QUERY_LOCK_TIMEOUT` seconds).
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rag_assets.search import MAX_K, Searcher, UnknownShard

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_app(searcher: Searcher) -> Starlette:
    def search(request: Request) -> JSONResponse:
        query = request.query_params.get("q", "")
        raw_k = request.query_params.get("k", "5")
        try:
            k = int(raw_k)
        except ValueError:
            return _error(400, f"k must be an integer between 1 and {MAX_K}, got {raw_k!r}")
        if not query.strip():
            return _error(400, "the query is empty: pass it as ?q=...")
        if not 1 <= k <= MAX_K:
            return _error(400, f"k must be an integer between 1 and {MAX_K}, got {k}")
        try:
            hits = searcher.search(query, k, request.query_params.get("shard") or None)
        except UnknownShard as exc:
            return _error(404, str(exc))
        except Exception as exc:  # the engine or the server failed: say so, keep serving
            log.exception("search failed")
            return _error(503, f"{type(exc).__name__}: {exc}")
        return JSONResponse({"query": query, "hits": hits})

    def health(request: Request) -> JSONResponse:
        try:
            return JSONResponse(searcher.health())
        except Exception as exc:
            return _error(503, f"{type(exc).__name__}: {exc}")

    return Starlette(routes=[Route("/search", search), Route("/health", health)])


def serve(searcher: Searcher, host: str, port: int) -> None:
    import uvicorn

    searcher.embedder  # noqa: B018 - load the model before the first request, not during it
    uvicorn.run(build_app(searcher), host=host, port=port, log_level="warning")
