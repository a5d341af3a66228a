"""The API's request and response bodies (pydantic), and the limits they state.

Every limit that a schema can state is stated here, so that the OpenAPI document (`/openapi.json`)
says it and a bad request is answered with 422 before any work; what a schema cannot state (which
images a task takes, whether an image decodes, whether a plan fits the model's context) is checked
by `omni.serve.inputs` and answered with 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT_CHARS = 500  # prompt / question / instruction / caption
MAX_IMAGE_SIDE = 512  # pixels, each side of an uploaded image
MAX_IMAGE_B64_CHARS = 1_500_000  # one image as base64 (a 512 x 512 RGB PNG stored raw is ~1.05 M)
MAX_PLAN_STEPS = 8  # the engine's own limit (omni.unroll.parse_plan)
MAX_PLAN_CHARS = 400
MAX_SEED = 2**31 - 1
MIN_FLOW_SHIFT = 1e-3  # omni.model.batch.MIN_SHIFT, stated literally (this module is kept free of torch)
MAX_WORLD_REVISION = 3  # the world's revisions are 1..this (omni.world.tasks.WORLD_REVISIONS, stated literally)

Task = Literal["vqa", "t2i", "spatial", "depth", "pose", "nvs", "video", "edit"]
B64 = Field(None, min_length=1, max_length=MAX_IMAGE_B64_CHARS,
            description="A PNG or JPEG file as base64 (a `data:image/...;base64,` prefix is allowed).")


class ImagesIn(BaseModel):
    """Uploaded images by the name the task gives them (see `GET /v1/plans`: `tasks.<task>.images`)."""

    model_config = ConfigDict(extra="forbid")
    image: str | None = B64
    view1: str | None = B64
    view2: str | None = B64
    source: str | None = B64
    before: str | None = B64
    frame0: str | None = B64


class UnrollRequest(BaseModel):
    """One run: a task, its input (a world seed, or uploaded images and text) and a plan."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"task": "vqa", "seed": 2000000000, "plan": "+thinking"},
        {"task": "t2i", "text": "a photo of a red cube left of a blue sphere.", "plan": "think_long,rollout_visual"},
        {"task": "depth", "images": {"image": "iVBORw0KGgo..."}, "plan": ["depth_caption", "rollout_visual"]},
    ]})
    task: Task = Field(..., description="What the model is asked to do.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, strict=True,  # strict: `true` is not seed 1
                             description="Take the input from the world's example for this seed (its images and "
                                         "text; for t2i also the ground-truth layout that `oracle_text` needs). "
                                         "Test split: 2000000000..2000999999. Give either `seed` or images/text.")
    world_revision: int = Field(1, ge=1, le=MAX_WORLD_REVISION, strict=True,
                                description="Which revision of the world `seed` draws from: 1 (what the shipped "
                                            "model was trained and scored on) or 2 (docs/world_audit.md's mends). "
                                            "Only with `seed`.")
    images: ImagesIn | None = Field(None, description="Uploaded images (instead of `seed`): RGB PNG or JPEG, at "
                                                      f"most {MAX_IMAGE_SIDE} x {MAX_IMAGE_SIDE}; center-cropped to "
                                                      "a square and resized to the model's image size.")
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS,
                             description="The prompt (t2i), question (vqa, spatial), instruction (nvs, edit) or "
                                         "caption (video) (instead of `seed`). depth and pose take no text.")
    plan: Annotated[str, Field(max_length=MAX_PLAN_CHARS)] | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=40)]], Field(max_length=MAX_PLAN_STEPS)] | None = Field(
        None, description="A preset row name of the task (`GET /v1/plans`), `default` (the paper's schedule; also "
                          "when omitted), `direct` (no context), primitive names separated by commas, or a list of "
                          f"primitive names; at most {MAX_PLAN_STEPS} steps.")
    # every number is strict, as `seed` is: JSON `true` is not 1 (lax mode would take it), nor is "1"; a float
    # field still takes a JSON integer (temperature 1), an integer field not a float (1.0)
    sample_seed: int = Field(0, ge=0, le=MAX_SEED, strict=True,
                             description="Seed of the sampler (same seed, same run).")
    temperature: float = Field(0.0, ge=0.0, le=2.0, strict=True,
                               description="Temperature of text tokens; 0: greedy decoding.")
    visual_temperature: float = Field(1.0, ge=0.0, le=2.0, strict=True,
                                      description="Temperature of visual tokens (0: greedy, which collapses onto "
                                                  "one code).")
    visual_top_k: int = Field(16, ge=0, le=65536, strict=True,
                              description="Visual tokens are sampled among the k likeliest codes (0: all).")
    cfg_scale: float | None = Field(None, ge=0.0, le=20.0, strict=True,
                                    description="Classifier-free guidance of generated images (1: none); omitted: "
                                                "the server's setting (`omni serve --cfg-scale`).")
    flow_shift: float = Field(1.0, ge=MIN_FLOW_SHIFT, le=20.0, strict=True,
                              description="Shift of the image sampler's noise grid toward pure noise (1: uniform "
                                          "steps).")


class PoseInfo(BaseModel):
    """A parsed pose text: the relative pose of view 2 in view 1's camera frame (OpenCV axes: x right,
    y down, z forward)."""

    center: list[float | None] = Field(..., description="View 2's camera centre in view 1's frame (metres).")
    forward: list[float | None] = Field(..., description="View 2's viewing direction (its z axis) in view 1's frame.")
    matrix: list[list[float | None]] = Field(..., description="The 4x4 relative pose T (view 2 -> view 1).")


class StepRecord(BaseModel):
    """One entry of the workspace (the input, a primitive's result) or the output."""

    index: int = Field(..., description="0 is the input; 1.. the plan's steps; the output has index len(plan) + 1.")
    step: str = Field(..., description="`input`, a primitive name, or `output`.")
    kind: str = Field(..., description="text, image, visual, pose or depth.")
    text: str | None = None
    tokens: int = Field(..., description="Tokens this step added to the context.")
    seconds: float
    image: str | None = Field(None, description="URL of a PNG: a visual-token preview, the synthesized views "
                                                "(up, down / left, right), a generated image or a colorized depth map.")
    depth: str | None = Field(None, description="URL of the depth map as a float32 .npy in metres (depth output).")
    pose: PoseInfo | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="Anything else the step recorded.")


class InputRecord(BaseModel):
    seed: int | None
    world_revision: int | None = Field(None, description="The world's revision the seed drew from (with `seed`).")
    text: str
    images: dict[str, str] = Field(..., description="URL of each input image as the model saw it.")


class Reference(BaseModel):
    """For a world seed: the ground truth and this run's scores against it (exact world knowledge)."""

    answer: str | None
    score: dict[str, float | None]


class UnrollResponse(BaseModel):
    run_id: str = Field(..., description="Server-generated id; artifacts live under /v1/artifacts/{run_id}/.")
    task: Task
    plan: list[str]
    input: InputRecord
    steps: list[StepRecord] = Field(..., description="The workspace in order: the input, then one per plan step.")
    output: StepRecord
    context_tokens: int
    seconds: float
    expires_at: float = Field(..., description="Unix time after which this run's artifacts are gone.")
    reference: Reference | None = None


class StreamEvent(BaseModel):
    """One line of `POST /v1/unroll/stream` (application/x-ndjson)."""

    event: Literal["queued", "start", "step", "output", "done", "error"]
    position: int | None = Field(None, description="queued: runs ahead of this one.")
    run_id: str | None = None
    plan: list[str] | None = None
    input: InputRecord | None = None
    step: StepRecord | None = Field(None, description="step and output events.")
    result: UnrollResponse | None = Field(None, description="done: the same body POST /v1/unroll returns.")
    error: ErrorBody | None = None


class ErrorBody(BaseModel):
    code: str = Field(..., description="Machine-readable: invalid_request (schema), bad_request (unreadable "
                                       "body), bad_input, bad_image, bad_plan, context_too_long, context_full, "
                                       "not_found, method_not_allowed, body_too_large, queue_full, timeout, "
                                       "internal.")
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


StreamEvent.model_rebuild()


class PrimitiveInfo(BaseModel):
    name: str
    description: str
    tasks: list[str] = Field(..., description="Tasks whose inputs it can run on.")
    needs: str | None = Field(None, description="What else it needs, if anything.")


class TaskPlans(BaseModel):
    images: list[str] = Field(..., description="The images the task takes (names in `images`).")
    text: str | None = Field(..., description="What `text` is for this task (prompt, question, ...), or null.")
    default: list[str]
    presets: dict[str, list[str]]


class PlansResponse(BaseModel):
    max_steps: int
    tasks: dict[str, TaskPlans]
    world_revisions: list[int]  # what a request's `world_revision` may name (the page's choice)


class QueueInfo(BaseModel):
    running: int
    waiting: int
    capacity: int


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: dict[str, Any]
    queue: QueueInfo
    limits: dict[str, int | float]
    uptime_s: float
