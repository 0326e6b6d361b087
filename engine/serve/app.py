"""The routes: the page, the models, jobs (create, read, follow, fetch, cancel). `create_app(config)`.

Every refusal is a status and `{"detail": one line}`, never a traceback. The OpenAPI schema at
/openapi.json (rendered at /docs) documents the API; the page in static/ uses nothing else.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import threading
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from srtrt import __version__
from srtrt.engine.batch.options import RunOptions
from srtrt.engine.serve import api_docs, models, uploads
from srtrt.engine.serve.clients import ClientId, client_of
from srtrt.engine.serve.jobs import AWAITING, TERMINAL, JobQueue, QueueFull
from srtrt.engine.serve.schema import JobOptions, JobRequest, JobView, Problem, ServerView, job_view
from srtrt.engine.serve.security import Guard
from srtrt.engine.serve.settings import ServeConfig
from srtrt.engine.serve.uploads import Refused
from srtrt.errors import SrtrtError

STATIC = resources.files("srtrt.engine.serve") / "static"
EVENT_POLL = 0.1        # seconds between looks at the queue for an event stream
KEEPALIVE = 15.0        # a comment line this often keeps proxies from closing a quiet stream
MEDIA = {".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff", ".mp4": "video/mp4", ".m4v": "video/mp4",
         ".mkv": "video/x-matroska", ".mov": "video/quicktime", ".webm": "video/webm", ".avi": "video/x-msvideo"}
PROBLEMS = {status: {"model": Problem} for status in (400, 401, 403, 404, 409, 413, 415, 422, 429)}
UPLOAD_PROBLEMS = {408: {"model": Problem, "description": "the upload stalled or trickled"},
                   503: {"model": Problem, "description": "the server is shutting down: send it again once it is back"},
                   507: {"model": Problem, "description": "the server's disk cannot take the upload now"}}


def _create_body() -> dict:
    """The two ways to create a job, for the schema: FastAPI cannot infer a route that takes either."""
    options = JobOptions.model_json_schema()
    form = {**options, "properties": {"file": {"type": "string", "format": "binary",
                                               "description": "the image or video (any field name)"},
                                      **options["properties"]}, "required": ["file"]}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": JobRequest.model_json_schema()}}}}


def create_app(config: ServeConfig, log=None) -> FastAPI:
    log = log or (lambda message: print(message, file=sys.stderr))
    # the multipart parser logs each malformed form it meets; the client's 400 already says it, in one line
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    backends = None
    if config.ray:  # connect before anything is made, so a cluster that cannot be reached is one line
        from srtrt.engine.serve.replicas import RayBackends

        backends = RayBackends(config.ray, config.device, log)
    try:
        root = Path(tempfile.mkdtemp(prefix="srtrt-serve-", dir=config.work_dir))
    except OSError as e:  # not writable, full
        raise SrtrtError(f"--work-dir: cannot make a folder in it ({e.strerror or e})", config.work_dir) from None
    queue = JobQueue(config, root, log, backends, workers=backends.replicas if backends else 1)
    # set when the server starts shutting down (main.server, else the lifespan's end): event streams and
    # uploads under way end then, rather than hold the shutdown until uvicorn cancels them
    closing = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        queue.start(_warm_options(config))
        try:
            yield
        finally:
            closing.set()
            await asyncio.to_thread(queue.stop)
            shutil.rmtree(root, ignore_errors=True)

    app = FastAPI(title="srtrt serve", version=__version__, lifespan=lifespan, responses=PROBLEMS,
                  docs_url=None, redoc_url=None,  # /docs is api_docs: served from here, no CDN
                  description="Upscale images and videos with srtrt: create a job (a multipart upload, or JSON naming "
                              "its options and then PUT its input), follow its progress (GET, or server-sent events), "
                              "fetch the result, cancel it. Errors are `{\"detail\": one line}`. Each client sees only "
                              "its own jobs: it is named by the `X-Srtrt-Client` header, else the `srtrt_client` "
                              "cookie; a request with neither is given a fresh id in both.")
    app.add_middleware(ClientId)
    app.add_middleware(Guard, config=config)  # outermost: nothing, not even a client id, before the token
    app.state.queue, app.state.closing = queue, closing
    _handlers(app)

    def view(job) -> JobView:
        return job_view(job, queue.position(job))

    def found(job_id: str, request: Request):
        job = queue.get(job_id, client_of(request))
        if job is None:
            raise Refused(404, f"no job {job_id} (finished results are kept {config.keep_seconds / 60:g} minutes)")
        return job

    def job_options(chosen: JobOptions) -> tuple[RunOptions, str]:
        entry = models.resolve(chosen.model, config.models_dir)
        return _run_options(config, entry, chosen), entry.id

    # ---------------------------------------------------------------- the page

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(api_docs.render(app.openapi()))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    # ---------------------------------------------------------------- the server

    @app.get("/api/server", response_model=ServerView, summary="Models offered, limits")
    def server() -> ServerView:
        offered = models.list_models(config.models_dir)
        shown = []
        for entry in offered:
            shown.append({"id": entry.id, "kind": entry.kind, "chosen": queue.warm.reason(_run_options(config, entry))})
        return ServerView(models=shown, default_model=offered[0].id if offered else None,
                          max_upload_bytes=config.max_upload_bytes, max_pixels=config.max_pixels,
                          queue_size=config.queue_size, keep_seconds=config.keep_seconds)

    # ---------------------------------------------------------------- jobs

    @app.post("/api/jobs", status_code=202, response_model=JobView, openapi_extra=_create_body(),
              responses={201: {"model": JobView, "description": "created by JSON: PUT its input next"}, **UPLOAD_PROBLEMS},
              summary="Create a job: upload a file (multipart), or name its options (JSON) and PUT the input after")
    async def create_job(request: Request):
        if uploads.media_type(request.headers) == b"application/json":  # its place in the queue is taken by the PUT
            asked = JobRequest.model_validate(_json(await _small_body(request, closing)))
            options, model = job_options(asked)
            name = uploads.display_name(asked.filename)
            uploads.accepted_suffix(name)  # 415 now rather than after the upload
            job = queue.create(name, options, model, client_of(request), listed=True)
            return JSONResponse(view(job).model_dump(), status_code=201)
        with queue.admission():
            job = queue.create("upload", RunOptions(), "", client_of(request))
            try:
                upload = await uploads.receive_form(request, job.folder, config.max_upload_bytes, closing)
                options, job.model = job_options(JobOptions.model_validate(upload.fields))
                job.name, job.options = upload.name, options
                await asyncio.to_thread(uploads.check_pixels, upload.path, upload.name, config.max_pixels)
                queue.submit(job, upload.path)
            except BaseException:
                queue.discard(job)
                raise
        return view(job)

    @app.put("/api/jobs/{job_id}/input", status_code=202, response_model=JobView, responses=UPLOAD_PROBLEMS,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
             summary="The input of a job created by JSON, as the raw request body")
    async def put_input(job_id: str, request: Request):
        job = found(job_id, request)
        if job.state != AWAITING:
            raise Refused(409, f"job {job_id} is {job.state}: its input is already in")
        path = uploads.input_path(job.folder, job.name)
        with queue.receiving(job), queue.admission():
            try:
                await uploads.receive_body(request, path, config.max_upload_bytes, closing)
            except FileExistsError:  # another PUT is writing this job's input: that one keeps the job
                raise Refused(409, f"job {job_id} is receiving its input from another request") from None
            except BaseException:
                queue.discard(job)
                raise
            try:
                await asyncio.to_thread(uploads.check_pixels, path, job.name, config.max_pixels)
            except BaseException:
                queue.discard(job)
                raise
            if not queue.submit(job, path):
                raise Refused(409, f"job {job_id} was cancelled")
        return view(job)

    @app.get("/api/jobs", response_model=list[JobView], summary="This client's jobs, oldest first")
    def list_jobs(request: Request):
        return [view(job) for job in queue.jobs(client_of(request))]

    @app.get("/api/jobs/{job_id}", response_model=JobView, summary="A job's state and progress")
    def get_job(job_id: str, request: Request):
        return view(found(job_id, request))

    @app.get("/api/jobs/{job_id}/events", summary="A job's state as server-sent events, until it ends",
             response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(job_id: str, request: Request):
        found(job_id, request)
        owner = client_of(request)

        def snapshot():
            job = queue.get(job_id, owner)
            return None if job is None else view(job).model_dump_json()

        return _event_stream(request, queue, snapshot, "job", closing, ends=lambda: _ended(queue, job_id, owner))

    @app.get("/api/events", summary="This client's jobs as server-sent events (one list per change)",
             response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
    async def queue_events(request: Request):
        owner = client_of(request)

        def snapshot():
            return json.dumps([view(job).model_dump() for job in queue.jobs(owner)])

        return _event_stream(request, queue, snapshot, "jobs", closing)

    @app.get("/api/jobs/{job_id}/result", summary="The result file (inline; ?download=1 for an attachment)",
             response_class=FileResponse, responses={200: {"content": {"image/png": {}, "video/*": {}}}})
    def result(job_id: str, request: Request, download: bool = False):
        job = found(job_id, request)
        if job.state != "done" or job.result is None or not job.result.is_file():
            raise Refused(409, job.message if job.state in TERMINAL else f"job {job_id} is {job.state}: no result yet")
        return FileResponse(job.result, media_type=MEDIA.get(job.result.suffix.lower(), "application/octet-stream"),
                            filename=job.result_name, content_disposition_type="attachment" if download else "inline")

    @app.delete("/api/jobs/{job_id}", response_model=JobView,
                summary="Cancel a job (a running one stops at its next tile batch); a finished one is deleted")
    def cancel(job_id: str, request: Request):
        job = queue.cancel(job_id, client_of(request))
        if job is None:
            raise Refused(404, f"no job {job_id}")
        return view(job)

    # `curl -I`, link checkers: HEAD is GET's headers without the body (the server drops it). Routes
    # of their own, out of the schema: a route taking both would be two operations with one id there.
    for path, endpoint in (("/", page), ("/api/server", server), ("/api/jobs/{job_id}/result", result)):
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
    return app


def _warm_options(config: ServeConfig) -> RunOptions | None:
    if not config.warm_default:
        return None
    return _run_options(config, models.resolve(None, config.models_dir))


def _run_options(config: ServeConfig, entry: models.ModelEntry, chosen: JobOptions | None = None) -> RunOptions:
    """What a job runs with: the client's choices (JobOptions' defaults when none), the server's device and limit."""
    chosen = JobOptions() if chosen is None else chosen
    return RunOptions(model=entry.source, backend=chosen.backend, precision=chosen.precision, alpha=chosen.alpha,
                      png_level=chosen.png_level, device=config.device, max_pixels=config.max_pixels)


async def _small_body(request: Request, closing: threading.Event, limit: int = 16 * 1024) -> bytes:
    body = bytearray()
    async for chunk in uploads.body_chunks(request, closing):
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"a JSON job request is at most {limit} bytes; send the file with PUT")
    return bytes(body)


def _json(body: bytes):
    """The request's JSON; a body that is not (bad UTF-8, nesting past the recursion limit, an integer
    of thousands of digits, a syntax error) is one 400 line, never a 500."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, RecursionError, ValueError) as e:
        reason = f"{e.msg} at character {e.pos}" if isinstance(e, json.JSONDecodeError) else \
            " ".join(str(e).split())[:120]
        raise Refused(400, f"the body is not JSON ({reason})") from None


def _ended(queue: JobQueue, job_id: str, owner: str) -> bool:
    job = queue.get(job_id, owner)
    return job is None or job.state in TERMINAL


def _event_stream(request: Request, queue: JobQueue, snapshot, event: str, closing: threading.Event,
                  ends=None) -> StreamingResponse:
    """Send `snapshot()` whenever it changes (looked at when the queue's version moves); stop when `ends()`,
    or when the server shuts down (a browser's EventSource then reconnects once it is back)."""

    async def stream():
        seen, last, quiet = -1, None, 0.0
        while not closing.is_set() and not await request.is_disconnected():
            if queue.version != seen:
                seen = queue.version
                data = snapshot()
                if data is not None and data != last:
                    last, quiet = data, 0.0
                    yield f"event: {event}\ndata: {data}\n\n"
                if ends is not None and ends():
                    return
            if quiet >= KEEPALIVE:
                quiet = 0.0
                yield ": keepalive\n\n"
            await asyncio.sleep(EVENT_POLL)
            quiet += EVENT_POLL

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _handlers(app: FastAPI) -> None:
    """Every refusal as its status and one line."""

    @app.exception_handler(Refused)
    async def refused(request, e: Refused):
        return JSONResponse({"detail": e.message}, status_code=e.status, headers=e.headers)

    @app.exception_handler(QueueFull)
    async def full(request, e: QueueFull):
        return JSONResponse({"detail": str(e)}, status_code=429, headers={"Retry-After": str(e.retry_after)})

    @app.exception_handler(SrtrtError)
    async def srtrt_error(request, e: SrtrtError):
        return JSONResponse({"detail": str(e)}, status_code=400)

    @app.exception_handler(ValidationError)
    @app.exception_handler(RequestValidationError)
    async def invalid(request, e):
        return JSONResponse({"detail": _one_line_errors(e.errors())}, status_code=422)


def _one_line_errors(errors) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", "invalid"))
    return "; ".join(parts)
