"""A1111 request bodies: the fields, defaults and limits clients rely on.

Unknown fields are ignored (clients send fields of other A1111 versions); values out of range are a
422 that names the field. A named always-on script (an extension's: ControlNet, ADetailer...) is A1111's
own 422 "always on script X not found", as A1111 answers for an extension it does not have
(worker/service.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gpuroam.api_errors import MAX_NESTING, nested_items

MAX_IMAGES_PER_REQUEST = 64
MAX_MASK_BLUR = 64  # A1111's slider goes to 64


class RequestError(ValueError):
    """A request that is well-formed JSON but cannot be served as asked (a 422)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


def _multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError(f"must be a multiple of 8 (got {value}); try {value - value % 8} or {value - value % 8 + 8}")
    return value


def _echoable(value: Any) -> Any:
    """Refuse what the response (which echoes the request) or the tokenizer cannot take.

    json.loads accepts lone UTF-16 surrogates ("\\ud800"), which UTF-8 cannot encode: in a prompt they
    failed the whole batch in the tokenizer (other clients' images too), elsewhere the response. Deep
    nesting made serialising the echo recurse past Python's limit. Both were 500s; now a 422 names the field.
    """
    for item, depth in nested_items(value):
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(
                    f"contains a lone UTF-16 surrogate at position {error.start}; send valid Unicode text"
                ) from None
        elif isinstance(item, dict | list) and depth >= MAX_NESTING:
            raise ValueError(f"is nested more than {MAX_NESTING} levels deep")
    return value


class GenerationRequest(BaseModel):
    """Fields shared by txt2img and img2img."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    subseed: int = Field(-1, ge=-1, le=2**32 - 1)
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    n_iter: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    steps: int = Field(50, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    width: int = Field(512, ge=64, le=2048)
    height: int = Field(512, ge=64, le=2048)
    restore_faces: bool | None = None
    tiling: bool | None = None
    eta: float | None = Field(None, ge=0.0, le=1.0)
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    force_task_id: str | None = Field(None, max_length=128)

    _check_size = field_validator("width", "height")(_multiple_of_8)
    _check_echoable = field_validator("*", mode="before")(_echoable)

    @field_validator("n_iter")
    @classmethod
    def _bounded_image_count(cls, n_iter: int, info: ValidationInfo) -> int:
        batch_size = info.data.get("batch_size", 1)
        if batch_size * n_iter > MAX_IMAGES_PER_REQUEST:
            raise ValueError(
                f"batch_size x n_iter is {batch_size * n_iter}; at most {MAX_IMAGES_PER_REQUEST} images per request"
            )
        return n_iter

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    @property
    def requested_sampler(self) -> str | None:
        return self.sampler_name or self.sampler_index


class Txt2ImgRequest(GenerationRequest):
    enable_hr: bool = False
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0)  # the hires pass's; None: 0.7 (worker/hires.py)
    hr_scale: float = Field(2.0, ge=1.0, le=8.0)
    hr_upscaler: str | None = Field(None, max_length=128)  # None: "Latent"
    hr_second_pass_steps: int = Field(0, ge=0, le=150)  # 0: the first pass's steps
    hr_resize_x: int = Field(0, ge=0, le=2048)
    hr_resize_y: int = Field(0, ge=0, le=2048)
    hr_sampler_name: str | None = Field(None, max_length=128)  # None or "Use same sampler": the first pass's
    hr_scheduler: str | None = Field(None, max_length=128)
    hr_prompt: str = ""  # "": the first pass's
    hr_negative_prompt: str = ""


class Img2ImgRequest(GenerationRequest):
    init_images: list[str] = Field(..., min_length=1, max_length=MAX_IMAGES_PER_REQUEST)
    resize_mode: int = Field(0, ge=0, le=3)
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    mask: str | None = None  # inpainting: white (or transparent) where the image is repainted
    mask_blur: int | None = Field(None, ge=0, le=MAX_MASK_BLUR)  # sets both mask_blur_x and mask_blur_y
    mask_blur_x: int = Field(4, ge=0, le=MAX_MASK_BLUR)
    mask_blur_y: int = Field(4, ge=0, le=MAX_MASK_BLUR)
    inpainting_fill: int = Field(0, ge=0, le=3)  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = True  # A1111's "Only masked": the masked area, cropped and scaled up
    inpaint_full_res_padding: int = Field(0, ge=0, le=2048)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


class OptionsUpdate(BaseModel):
    model_config = ConfigDict(extra="allow")
