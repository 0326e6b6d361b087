"""What the API takes and gives, as pydantic models: they are the OpenAPI schema at /openapi.json."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from srtrt.engine.batch.options import ALPHA_MODES, BACKENDS, PRECISIONS
from srtrt.engine.serve.jobs import Job


class JobOptions(BaseModel):
    """A job's options: the fields of `srtrt run` a client may choose (the server fixes device and limits)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="an id from the models that GET /api/server lists; default: its default_model")
    backend: Literal[BACKENDS] = "auto"
    precision: Literal[PRECISIONS] = "auto"
    alpha: Literal[ALPHA_MODES] = "bicubic"
    png_level: int | None = Field(None, ge=0, le=9, description="PNG deflate level; default: the measured one")


class JobRequest(JobOptions):
    """A job created by JSON: its input follows with PUT /api/jobs/{id}/input."""

    filename: str = Field(..., description="the input's file name: its suffix says the format; shown, never a path")


class Progress(BaseModel):
    unit: str = Field(description="tile (an image) or frame (a video)")
    done: int
    total: int


class JobView(BaseModel):
    id: str
    name: str
    state: Literal["awaiting_input", "queued", "running", "done", "failed", "cancelled"]
    message: str = Field(description="done: what was written; failed: the one-line cause")
    model: str
    backend: str = Field(description="the backend that ran the job and why (what auto chose)")
    progress: Progress
    position: int | None = Field(description="place in the queue, 1 = next; null unless queued")
    cancel_requested: bool
    created: float
    started: float | None
    finished: float | None
    input_url: str | None = Field(description="where to PUT the input of a job created by JSON")
    result_url: str | None
    result_name: str | None
    result_bytes: int | None


class ModelView(BaseModel):
    id: str
    kind: Literal["embedded", "checkpoint", "community"]
    chosen: str | None = Field(description="what backend auto chose for it and why, once it has run")


class ServerView(BaseModel):
    models: list[ModelView]
    default_model: str | None
    max_upload_bytes: int
    max_pixels: int
    queue_size: int
    keep_seconds: float


class Problem(BaseModel):
    detail: str = Field(description="one line")


def job_view(job: Job, position: int | None) -> JobView:
    base = f"/api/jobs/{job.id}"
    done = job.state == "done"
    return JobView(id=job.id, name=job.name, state=job.state, message=job.message, model=job.model, backend=job.backend,
                   progress=Progress(unit=job.unit, done=job.done, total=job.total), position=position,
                   cancel_requested=job.cancel_requested, created=job.created, started=job.started,
                   finished=job.finished, input_url=f"{base}/input" if job.state == "awaiting_input" else None,
                   result_url=f"{base}/result" if done else None, result_name=job.result_name if done else None,
                   result_bytes=job.result_bytes if done else None)
