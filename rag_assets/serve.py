"""`rag-assets serve`: the search as an HTTP JSON API, the model loaded once.

Starlette on uvicorn: both already come with dagster-webserver, and Starlette runs the plain (blocking)
endpoints below in its thread pool, so a slow query never stalls the event loop.

- `GET /search?q=...&k=5&shard=...&mode=hybrid`: the same JSON as `rag-assets search --json` (with the mode
  it ran in: hybrid falls back to dense on a collection without sparse vectors); 400 for an empty or missing
  query, a k outside 1..1000, an unknown mode or sparse on a collection without sparse vectors, 404 for a
  shard the collection does not hold.
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

from rag_assets.config import SEARCH_MODES
from rag_assets.search import MAX_K, Searcher, UnknownShard
from rag_assets.sparse import ModeUnavailable

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
        mode = request.query_params.get("mode") or None
        if mode is not None and mode not in SEARCH_MODES:
            return _error(400, f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
        try:
            answer = searcher.answer(query, k, request.query_params.get("shard") or None, mode)
        except UnknownShard as exc:
            return _error(404, str(exc))
        except ModeUnavailable as exc:
            return _error(400, str(exc))
        except Exception as exc:  # the engine or the server failed: say so, keep serving
            log.exception("search failed")
            return _error(503, f"{type(exc).__name__}: {exc}")
        return JSONResponse(answer)

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
