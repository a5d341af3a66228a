"""The HTTP API and the page: `create_app(checkpoint)` -> a FastAPI app (run it with uvicorn, or
`omni serve`).

    POST /v1/unroll          one run; the final output and the workspace trace, images as artifact URLs
    POST /v1/unroll/stream   the same run as NDJSON events, one line per step as it joins the workspace
    GET  /v1/artifacts/{run_id}/{name}   a run's images (PNG) and depth maps (.npy), until they expire
    GET  /v1/primitives, /v1/plans, /healthz
    GET  /                   the page (omni/serve/static), /docs the OpenAPI UI (served locally)

Errors are JSON `{"error": {"code", "message", "details"?}}` with a 4xx status for every bad request;
runs go through one bounded queue (429 when full) and each has a deadline (504 when it passes).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from omni.model import OmniModel
from omni.unroll.engine import (
    CFG_SCALE,
    DEFAULT_PLAN,
    FLOW_STEPS,
    LAYOUT_TOKENS,
    NEEDS,
    PLANS,
    PRIMITIVES,
    THINK_TOKENS,
    Engine,
    Inputs,
    Item,
    parse_pose,
)
from omni.unroll.trace import json_safe
from omni.world.export import to_uint8

from .inputs import TASK_INPUTS, InputError, Prepared, prepare
from .jobs import ArtifactStore, Cancelled, Job, Runner
from .schemas import (
    MAX_IMAGE_SIDE,
    MAX_PLAN_STEPS,
    MAX_TEXT_CHARS,
    MAX_WORLD_REVISION,
    ErrorResponse,
    HealthResponse,
    PlansResponse,
    PrimitiveInfo,
    StreamEvent,
    UnrollRequest,
    UnrollResponse,
)

log = logging.getLogger("omni.serve")
STATIC = Path(__file__).parent / "static"

DESCRIPTIONS = {
    "think": "A short chain of thought (<think> ... </think>).",
    "think_long": "A layout-level description (<layout>): each object and where it is.",
    "describe": "A detailed caption of the input image (<caption>).",
    "depth_caption": "A depth caption (<depthcap>): front-to-back order, occlusion, support.",
    "estimate_pose": "The relative camera pose of view 2 in view 1 as text (<campose>tx ty tz rx ry rz</campose>).",
    "rollout_visual": "The model's own discrete visual tokens (<vis> codes </vis>); the page shows them decoded.",
    "synthesize_views": "Novel views from view 1 (look up, down, left, right by 30 degrees), written back as images.",
    "oracle_text": "The world's ground-truth layout (an oracle row of the ablations).",
}


@dataclass
class ServeSettings:
    max_body_bytes: int = 8 * 2**20  # a request body (JSON with base64 images)
    max_queue: int = 8  # runs waiting behind the one running; more are refused with 429
    timeout_s: float = 120.0  # per run, from admission to the last step (504 after)
    artifact_ttl_s: float = 900.0  # how long a run's images stay
    max_artifact_runs: int = 256  # runs whose images are held at once (oldest dropped first)
    flow_steps: int = FLOW_STEPS  # Euler steps of the image flow sampler (the engine's defaults)
    cfg_scale: float = CFG_SCALE
    think_tokens: int = THINK_TOKENS
    layout_tokens: int = LAYOUT_TOKENS
    score_world: bool = True  # runs on a world seed report scores against its ground truth

    def validate(self) -> None:
        for name in ("max_body_bytes", "timeout_s", "artifact_ttl_s", "max_artifact_runs", "flow_steps",
                     "think_tokens", "layout_tokens"):
            v = getattr(self, name)
            if not 0 < v < math.inf:  # NaN fails too
                raise ValueError(f"{name} must be positive, got {v}")
        if not 0 <= self.cfg_scale < math.inf:
            raise ValueError(f"cfg_scale must not be negative, got {self.cfg_scale}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must not be negative, got {self.max_queue}")
        if self.artifact_ttl_s < self.timeout_s:  # a run's images are kept from its start: they were 404 on arrival
            raise ValueError(f"artifact_ttl_s ({self.artifact_ttl_s:g} s) must be at least timeout_s "
                             f"({self.timeout_s:g} s): a run's images would expire before the run may end")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str, details: list | None = None) -> dict:
    return {"error": {"code": code, "message": message, **({"details": details} if details else {})}}


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def pose_info(text: str | None) -> dict | None:
    T = parse_pose(text or "")
    if T is None or not np.isfinite(T).all():
        return None
    return json_safe({"center": T[:3, 3], "forward": T[:3, 2], "matrix": T})


class Server:
    """The model, its queue and the artifacts of its runs."""

    def __init__(self, model: OmniModel, settings: ServeSettings, name: str):
        settings.validate()
        self.model, self.settings, self.name = model, settings, name
        # fails now if the model has no tokenizers, or a setting is one the engine refuses (a float number
        # of flow steps, say, failed every request with a 500)
        Engine(model, flow_steps=settings.flow_steps, cfg_scale=settings.cfg_scale,
               think_tokens=settings.think_tokens, layout_tokens=settings.layout_tokens)
        self.runner = Runner(settings.max_queue)
        self.store = ArtifactStore(settings.artifact_ttl_s, settings.max_artifact_runs)
        self.started = time.time()

    def engine(self, req: UnrollRequest) -> Engine:
        s = self.settings
        return Engine(self.model, temperature=req.temperature, seed=req.sample_seed, flow_steps=s.flow_steps,
                      visual_temperature=req.visual_temperature, visual_top_k=req.visual_top_k,
                      cfg_scale=s.cfg_scale if req.cfg_scale is None else req.cfg_scale, flow_shift=req.flow_shift,
                      think_tokens=s.think_tokens, layout_tokens=s.layout_tokens)

    # -- one run, in the model's thread -----------------------------------------------------------

    def record(self, run_id: str, index: int, item: Item) -> dict:
        rec = {"index": index, **item.to_json()}
        tag = "output" if item.step == "output" else f"step_{index}_{item.step}"
        if item.image is not None:
            rec["image"] = self.store.put(run_id, f"{tag}.png", png_bytes(item.image), "image/png")
        if item.kind == "depth" and "depth" in item.data:
            from omni.world.export import colorize_depth

            d = np.asarray(item.data["depth"], dtype=np.float32)
            ok = np.isfinite(d)
            rec["image"] = self.store.put(run_id, f"{tag}_depth.png", png_bytes(colorize_depth(d, ok)), "image/png")
            rec["depth"] = self.store.put(run_id, f"{tag}_depth.npy", npy_bytes(d), "application/octet-stream")
            rec.setdefault("data", {}).update(
                {"min_m": float(d[ok].min()) if ok.any() else None, "max_m": float(d[ok].max()) if ok.any() else None})
        if item.kind == "pose":
            rec["pose"] = pose_info(item.text)
        return json_safe(rec)

    def execute(self, prep: Prepared, req: UnrollRequest, job: Job, emit) -> dict:
        """Run in the model's thread, emitting events as the workspace grows; returns the last event
        (done or error), which the runner emits once the run's place in the queue is free."""
        try:
            job.check()
            t0 = time.perf_counter()
            run_id, expires = self.store.new_run()
            images = {k: self.store.put(run_id, f"input_{k}.png", png_bytes(v), "image/png")
                      for k, v in prep.inputs.images.items()}
            inp = {"seed": prep.seed, "world_revision": None if prep.seed is None else req.world_revision,
                   "text": prep.inputs.text, "images": images}
            emit({"event": "start", "run_id": run_id, "plan": prep.steps, "input": inp})
            records: list[dict] = []

            def on_step(item: Item) -> None:
                rec = self.record(run_id, len(records), item)
                records.append(rec)
                emit({"event": "output" if item.step == "output" else "step", "step": rec})
                if item.step != "output":
                    job.check()

            res = self.engine(req).run(prep.inputs, prep.steps, on_step=on_step)
            reference = None
            if prep.example is not None and self.settings.score_world:
                from omni.eval.run import score

                ex = prep.example
                reference = {"answer": None if ex.answer is None else str(ex.answer), "score": score(ex, res)}
            result = {"run_id": run_id, "task": req.task, "plan": res.plan, "input": inp, "steps": records[:-1],
                      "output": records[-1], "context_tokens": sum(int(r["tokens"]) for r in records),
                      "seconds": round(time.perf_counter() - t0, 4), "expires_at": expires, "reference": reference}
            return {"event": "done", "result": json_safe(result)}
        except Cancelled as e:
            return _error_event(504, "timeout", f"the run was stopped: {e} (limit {self.settings.timeout_s:g} s)")
        except ValueError as e:
            if "KV cache full" in str(e):
                return _error_event(422, "context_full", f"the workspace outgrew the model's context: {e}")
            log.exception("run failed")
            return _error_event(500, "internal", f"the run failed: {e}")
        except Exception as e:  # a bug: reported as 500, logged with its traceback
            log.exception("run failed")
            return _error_event(500, "internal", f"the run failed: {type(e).__name__}: {e}")

    # -- admission, in the event loop ---------------------------------------------------------------

    async def events(self, req: UnrollRequest) -> AsyncIterator[dict]:
        """Validate, admit (or refuse with 429) and run a request; yields its events. Errors before the
        run is admitted are raised as ApiError (they become the response's status)."""
        position = self.runner.admit()  # first, so that a full queue costs nothing (no rendering, no decoding)
        if position is None:
            cap = self.runner.capacity
            raise ApiError(429, "queue_full", f"the model is busy ({cap} runs admitted); try again shortly",
                           headers={"Retry-After": "2"})
        try:
            prep = await run_in_threadpool(prepare, req, self.engine(req), self.model.cfg.image_size)
        except InputError as e:
            self.runner.release()
            raise ApiError(e.status, e.code, e.message) from None
        except BaseException:
            self.runner.release()
            raise
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[dict] = asyncio.Queue()

        def emit(ev: dict) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                pass

        job = Job(lambda j: self.execute(prep, req, j, emit), time.monotonic() + self.settings.timeout_s, finish=emit)
        self.runner.submit(job)
        return self._follow(job, q, position)

    async def _follow(self, job: Job, q: asyncio.Queue, position: int) -> AsyncIterator[dict]:
        try:
            yield {"event": "queued", "position": position}
            while True:
                remaining = job.deadline - time.monotonic()
                try:
                    ev = await asyncio.wait_for(q.get(), timeout=max(remaining, 0.001))
                except TimeoutError:
                    job.cancelled.set()
                    yield _error_event(504, "timeout", f"the run took longer than {self.settings.timeout_s:g} s")
                    return
                yield ev
                if ev["event"] in ("done", "error"):
                    return
        finally:
            job.cancelled.set()  # a client that went away stops its run at the next step


def _json_type(content_type: str) -> bool:
    """Whether a Content-Type is one FastAPI reads a body as JSON under (application/json, .../x+json)."""
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed its connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _error_event(status: int, code: str, message: str) -> dict:
    return {"event": "error", "status": status, **error_body(code, message)}


def _public(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if k != "status"}


ERRORS = {code: {"model": ErrorResponse, "description": d} for code, d in {
    400: "Bad input: unknown primitive, a plan the input cannot run, an undecodable or oversized image, a "
         "missing image or text, or a plan that may not fit the model's context.",
    413: "The request body is larger than the server's limit.",
    422: "The body does not match the schema (or the workspace outgrew the model's context).",
    429: "The model's queue is full; retry after the `Retry-After` seconds.",
    504: "The run passed the server's per-request time limit.",
}.items()}


def load_model(checkpoint: str | Path, device: str = "cpu") -> OmniModel:
    from omni.model.checkpoint import check_device

    check_device(device)  # an unknown device is named before a missing checkpoint
    d = Path(checkpoint)
    if not d.exists():  # a file is from_pretrained's error to give
        raise FileNotFoundError(f"checkpoint directory not found: {d} (train one with `omni train`, or pass "
                                "--checkpoint DIR)")
    return OmniModel.from_pretrained(d, device=device)


def create_app(checkpoint: str | Path | None = None, settings: ServeSettings | None = None,
               model: OmniModel | None = None, device: str = "cpu") -> FastAPI:
    """The app for a checkpoint directory, loaded on `device` (or an already loaded `model`)."""
    from fastapi_offline import FastAPIOffline

    settings = settings or ServeSettings()
    if model is None:
        if checkpoint is None:
            raise ValueError("give a checkpoint directory or a model")
        model = load_model(checkpoint, device)
    server = Server(model, settings, Path(checkpoint).name if checkpoint else "in-memory model")
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.runner.close()

    app = FastAPIOffline(title="omni", version="0.1.0", static_url="/docs-static", lifespan=lifespan,
                         description="Context Unrolling in Omni Models: run a plan of primitives on a task and "
                                     "see every step of the workspace. The page is at `/`.")
    app.state.server = server

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(error_body(e.code, e.message), e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        details = [{"loc": [str(x) for x in d.get("loc", ())], "msg": str(d.get("msg", "")),
                    "type": str(d.get("type", ""))} for d in e.errors()]
        summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5]) or "invalid request"
        ctype = request.headers.get("content-type", "")
        if [d["loc"] for d in details] == [["body"]] and not _json_type(ctype):  # the body was not read as JSON
            got = f"got {ctype!r}" if ctype else "none was given"
            summary = f"the body must be a JSON object sent with Content-Type: application/json ({got}); {summary}"
        return JSONResponse(error_body("invalid_request", summary, details), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return JSONResponse(error_body(code, str(e.detail)), e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        log.exception("unhandled error")
        return JSONResponse(error_body("internal", f"{type(e).__name__}: {e}"), 500)

    @app.post("/v1/unroll", response_model=UnrollResponse, responses=ERRORS, tags=["runs"])
    async def unroll(req: UnrollRequest, request: Request) -> Response:
        """Run a plan on one input and return the final output with the whole workspace (trace). Images
        come back as artifact URLs under `/v1/artifacts/{run_id}/` that expire."""
        events = await server.events(req)

        async def answer() -> JSONResponse:
            async for ev in events:
                if ev["event"] == "done":
                    return JSONResponse(ev["result"])
                if ev["event"] == "error":
                    return JSONResponse({"error": ev["error"]}, ev["status"])
            raise RuntimeError("the run ended without a result")

        # a client that goes away stops its run at the next step, as a streamed run's does (the server
        # is told by the connection, not by a read of the answer, which never comes)
        run, gone = asyncio.ensure_future(answer()), asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({run, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not run.done():
                run.cancel()  # closing the events cancels the job
        if not run.done():
            await asyncio.wait({run})
        if run.cancelled():
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        return run.result()

    @app.post("/v1/unroll/stream", tags=["runs"], responses={**ERRORS, 200: {
        "description": "`application/x-ndjson`: one `StreamEvent` JSON object per line — `queued` (position), "
                       "`start` (run id, plan, input), one `step` per workspace item as it is added (the input "
                       "first), `output`, then `done` (the full `UnrollResponse`) or `error` (also on timeout).",
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}})
    async def unroll_stream(req: UnrollRequest) -> StreamingResponse:
        """The same run as `POST /v1/unroll`, streamed: watch the workspace fill step by step. Validation
        errors and a full queue are answered with their 4xx status before the stream starts."""
        events = await server.events(req)

        async def lines():
            async for ev in events:
                yield json.dumps(_public(ev), allow_nan=False) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/v1/artifacts/{run_id}/{name}", tags=["runs"], responses={
        200: {"description": "A PNG image or a float32 .npy array.",
              "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                          "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        404: {"model": ErrorResponse, "description": "No such run or file, or it expired."},
        422: {"model": ErrorResponse, "description": "A malformed run id or file name."}})
    async def artifact(run_id: str = PathParam(..., pattern=r"^[A-Za-z0-9_-]{8,64}$"),
                       name: str = PathParam(..., pattern=r"^[a-z0-9_]{1,64}\.(png|npy)$")) -> Response:
        """A file of a run (ids come from the server; artifacts expire after the server's time to live)."""
        got = server.store.get(run_id, name)
        if got is None:
            raise ApiError(404, "not_found", f"no artifact {name!r} for run {run_id!r} (unknown, or expired)")
        data, media = got
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=600"})

    @app.get("/v1/primitives", response_model=list[PrimitiveInfo], tags=["plans"])
    async def primitives() -> list[dict]:
        """Every primitive a plan can name, and the tasks it can run on."""
        return [primitive_info(name) for name in sorted(PRIMITIVES)]

    @app.get("/v1/plans", response_model=PlansResponse, tags=["plans"])
    async def plans() -> dict:
        """Per task: the images and text it takes, the paper's default plan and the preset rows; and the
        world's revisions a request's seed may draw from."""
        return {"max_steps": MAX_PLAN_STEPS, "tasks": {
            t: {"images": list(TASK_INPUTS[t][0]), "text": TASK_INPUTS[t][1], "default": DEFAULT_PLAN[t],
                "presets": PLANS[t]} for t in PLANS}, "world_revisions": list(range(1, MAX_WORLD_REVISION + 1))}

    @app.get("/healthz", response_model=HealthResponse, tags=["server"])
    async def healthz() -> dict:
        """Liveness, the model, the queue and the limits."""
        cfg = model.cfg
        return {"status": "ok", "uptime_s": round(time.time() - server.started, 1),
                "model": {"checkpoint": server.name, "preset": cfg.preset, "image_size": cfg.image_size,
                          "max_seq": cfg.max_seq, "parameters": sum(p.numel() for p in model.parameters())},
                "queue": server.runner.stats(),
                "limits": {"max_body_bytes": settings.max_body_bytes, "max_image_side": MAX_IMAGE_SIDE,
                           "max_text_chars": MAX_TEXT_CHARS, "max_plan_steps": MAX_PLAN_STEPS,
                           "timeout_s": settings.timeout_s, "artifact_ttl_s": settings.artifact_ttl_s,
                           "queue_capacity": server.runner.capacity}}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # the schema of the streamed lines, so that clients can generate it
    _orig_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = _orig_openapi()
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, sub in StreamEvent.model_json_schema(ref_template="#/components/schemas/{model}")\
                    .get("$defs", {}).items():
                comps.setdefault(name, sub)
            comps["StreamEvent"] = {k: v for k, v in StreamEvent.model_json_schema(
                ref_template="#/components/schemas/{model}").items() if k != "$defs"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


ORACLE_TASKS = ("t2i",)  # tasks whose world examples carry a ground-truth layout (omni.eval.run.inputs_of)


def primitive_info(name: str) -> dict:
    """The tasks whose inputs a primitive can run on, found by asking its own input check."""
    tasks, needs = [], None
    for t, (slots, _) in TASK_INPUTS.items():
        images = {s: np.zeros((1, 1, 3)) for s in slots}
        if NEEDS[name](Inputs(t, images, "x")) is None:
            tasks.append(t)
        elif t in ORACLE_TASKS and NEEDS[name](Inputs(t, images, "x", oracle="x")) is None:
            tasks.append(t)
            needs = "a world seed (it reads the example's ground truth)"
    return {"name": name, "description": DESCRIPTIONS.get(name, "A primitive registered by the user."),
            "tasks": tasks, "needs": needs}


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before the app reads it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        cl = headers.get(b"content-length")
        if cl is not None:
            if not cl.isdigit():
                return await JSONResponse(error_body("bad_request", "invalid Content-Length"), 400)(scope, receive,
                                                                                                    send)
            if int(cl) > self.limit:
                return await self._too_large(scope, receive, send)
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.limit:
                return await self._too_large(scope, receive, send)
            chunks.append(body)
            if not msg.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        r = JSONResponse(error_body("body_too_large", f"the request body is larger than {self.limit} bytes"), 413)
        await r(scope, receive, send)

