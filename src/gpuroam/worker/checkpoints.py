"""Load a Stable Diffusion checkpoint fully offline: a diffusers folder or one A1111-style file.

Single `.safetensors` / `.ckpt` files in the original (LDM / CompVis / A1111) layout carry
weights but no architecture. diffusers' `from_single_file` would fetch the matching configs
from the Hub; here the family is detected from the state-dict keys and the configs come from
`assets/configs/<family>/` (the published SD 1.5, SD 2.1 and SDXL base 1.0 configs, without
weights), so nothing is ever downloaded. Tokenizers are built from package data.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import torch
import yaml
from diffusers.loaders.single_file_utils import SingleFileComponentError

# diffusers' top-level names are, to a type checker, placeholder classes: import from the defining modules.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from safetensors import SafetensorError, safe_open

from gpuroam.worker.tokenizer import EOS, clip_tokenizer

CONFIGS_DIR = Path(__file__).parent / "assets" / "configs"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
USAGE = "pass a SD 1.x/2.x/SDXL .safetensors/.ckpt file or a diffusers folder (with model_index.json)"

Family = Literal["sd1", "sd2", "sdxl"]
PredictionType = Literal["epsilon", "v_prediction"]

FAMILY_LABELS: dict[str, str] = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
PipelineClass = type[StableDiffusionPipeline] | type[StableDiffusionXLPipeline]
PIPELINE_CLASSES: dict[str, PipelineClass] = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
}
SchedulerClass = type[PNDMScheduler] | type[DDIMScheduler] | type[EulerDiscreteScheduler]
SCHEDULER_CLASSES: dict[str, SchedulerClass] = {
    "PNDMScheduler": PNDMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
}

# Keys of the original LDM layout that tell the families apart (the same parts A1111 looks at).
UNET_PREFIX = "model.diffusion_model."
UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
VAE_PREFIX = "first_stage_model."
SD1_CLIP = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
SD1_CLIP_OLD_LAYOUT = "cond_stage_model.transformer.embeddings.position_embedding.weight"
SD2_OPEN_CLIP = "cond_stage_model.model.token_embedding.weight"
SDXL_CLIP = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
SDXL_OPEN_CLIP = "conditioner.embedders.1.model.positional_embedding"
SDXL_REFINER_PREFIX = "conditioner.embedders.0.model."
INPAINTING_CHANNELS = 9  # latent 4 + mask 1 + masked image latent 4
V_PRED_MARKER = "v_pred"  # empty tensor some v-prediction fine-tunes carry (ComfyUI convention)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says what is wrong and what to pass instead."""


@dataclass(frozen=True)
class CheckpointKind:
    family: Family
    prediction_type: PredictionType
    inpainting: bool = False  # the UNet takes the mask and the masked image too (9 input channels)

    @property
    def label(self) -> str:
        v = " (v-prediction)" if self.prediction_type == "v_prediction" else ""
        return FAMILY_LABELS[self.family] + (" inpainting" if self.inpainting else "") + v


def load_checkpoint(path: Path, dtype: torch.dtype) -> DiffusionPipeline:
    """Load a diffusers folder or a single original-format file, without touching the Hub.

    The pipeline is on the CPU in `dtype`, with no safety checker (A1111 has none either).
    Raises `CheckpointError` saying what is wrong with `path` and what to pass instead.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; {USAGE}")
    if path.is_dir():
        return load_diffusers_folder(path, dtype)
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise CheckpointError(f"unsupported checkpoint file type {path.suffix or '(no suffix)'!r} for {path}; {USAGE}")
    return load_single_file(path, dtype)


def load_diffusers_folder(path: Path, dtype: torch.dtype) -> DiffusionPipeline:
    """A folder saved by diffusers: its model_index.json names the pipeline class."""
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise CheckpointError(f"{path} is a folder without model_index.json, so not a diffusers model; {USAGE}")
    class_name = json.loads(index_file.read_text()).get("_class_name")
    pipeline_class = PIPELINE_CLASSES.get(class_name)
    if pipeline_class is None:
        raise CheckpointError(
            f"{path} holds a {class_name} model; only {' and '.join(PIPELINE_CLASSES)} folders are supported"
        )
    extra: dict[str, Any]
    if pipeline_class is StableDiffusionPipeline:
        extra = {"safety_checker": None, "requires_safety_checker": False}
    else:
        extra = {"add_watermarker": False}  # A1111 does not watermark SDXL images
    try:
        return pipeline_class.from_pretrained(path, dtype=dtype, local_files_only=True, **extra)
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"could not load the diffusers folder {path}: {err}") from err


def load_single_file(path: Path, dtype: torch.dtype, config_dir: Path | None = None) -> DiffusionPipeline:
    """Load an original-format file with the bundled configs of its detected family.

    `config_dir` replaces the bundled config folder (a diffusers folder without weights); tests
    use it to load tiny models.
    """
    shapes = read_tensor_shapes(path)
    kind = detect_checkpoint(shapes, source=path.name)
    prediction_type = sidecar_prediction_type(path)
    if prediction_type is not None:
        kind = replace(kind, prediction_type=prediction_type)
    config_dir = config_dir or CONFIGS_DIR / kind.family
    check_unet_matches_config(shapes, config_dir, kind, source=path.name)

    pipeline_class = PIPELINE_CLASSES[_read_json(config_dir / "model_index.json")["_class_name"]]
    components: dict[str, Any] = {"scheduler": build_scheduler(config_dir, kind.prediction_type)}
    if kind.inpainting:  # the bundled configs are the text-to-image models'
        components["num_in_channels"] = INPAINTING_CHANNELS
    if kind.family == "sdxl":
        # SDXL's first tokenizer is OpenAI CLIP's (pads with EOS); the second, OpenCLIP's (pads with "!").
        components.update(tokenizer=clip_tokenizer(EOS), tokenizer_2=clip_tokenizer("!"), add_watermarker=False)
    else:
        pad_token = EOS if kind.family == "sd1" else "!"
        components.update(tokenizer=clip_tokenizer(pad_token), safety_checker=None, requires_safety_checker=False)
    try:
        return pipeline_class.from_single_file(
            str(path), config=str(config_dir), local_files_only=True, dtype=dtype, **components
        )
    except (SingleFileComponentError, OSError, ValueError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"could not load {path} as {kind.label}: {err}") from err


def read_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape, without reading the weights of a .safetensors file (its header is enough)."""
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} is not a readable .safetensors file ({err}); re-download it") from err
    state_dict = load_ckpt_state_dict(path)
    return {key: tuple(value.shape) for key, value in state_dict.items() if isinstance(value, torch.Tensor)}


def load_ckpt_state_dict(path: Path) -> dict[str, Any]:
    """A .ckpt is a pickle: `weights_only=True` refuses anything but tensors and plain containers.

    diffusers' own loader (used afterwards by `from_single_file`) also loads with weights_only=True.
    """
    try:
        # mmap keeps a zip-format checkpoint on disk: only the shapes are read here.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects besides weights, which are not loaded for safety "
            f"(torch.load weights_only=True refused it: {str(err).splitlines()[0]}); "
            "use a .safetensors version of this model"
        ) from err
    except Exception as err:  # a damaged pickle fails in many ways (EOFError, IndexError, RuntimeError...)
        raise CheckpointError(f"{path} is not a readable PyTorch .ckpt file ({err!r}); re-download it") from err
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(checkpoint).__name__}); {USAGE}")
    return checkpoint


def detect_checkpoint(shapes: Mapping[str, tuple[int, ...]], source: str = "the checkpoint") -> CheckpointKind:
    """Tell SD 1.x, SD 2.x and SDXL base apart from key names and one shape, as A1111 does.

    - UNet present: keys under `model.diffusion_model.`, with 4 input channels, or 9 for an inpainting
      model (instruct-pix2pix has 8: not supported).
    - Text encoder layout decides the family: OpenAI CLIP under `cond_stage_model.transformer.`
      is SD 1.x; OpenCLIP under `cond_stage_model.model.` is SD 2.x; `conditioner.embedders.0`
      (CLIP) plus `.1` (OpenCLIP bigG) is SDXL base; OpenCLIP alone at `.0` is the SDXL refiner.
    - Prediction type: a `v_pred` key means v-prediction. Otherwise SD 2.x is taken as
      v-prediction (the 768-v models, diffusers' default too) and the rest as epsilon. Weights
      cannot tell SD 2.x 768-v from 512-base: a sidecar `<name>.yaml` decides (see
      `sidecar_prediction_type`).
    """
    if not any(key.startswith(UNET_PREFIX) for key in shapes):
        raise CheckpointError(
            f"not a Stable Diffusion checkpoint: no UNet keys ({UNET_PREFIX}*) found in {source}; {USAGE}"
        )
    if UNET_CONV_IN not in shapes:
        raise CheckpointError(f"{source} has UNet keys but no {UNET_CONV_IN}; the file is incomplete; {USAGE}")
    in_channels = shapes[UNET_CONV_IN][1]
    if in_channels not in (4, INPAINTING_CHANNELS):
        what = "an instruct-pix2pix model" if in_channels == 8 else f"a UNet with {in_channels} input channels"
        raise CheckpointError(
            f"{source} is {what}; only text-to-image and inpainting SD 1.x/2.x/SDXL base checkpoints are supported"
        )

    family: Family
    required: tuple[str, ...]
    if SDXL_OPEN_CLIP in shapes:
        family, required = "sdxl", (SDXL_CLIP, SDXL_OPEN_CLIP)
    elif any(key.startswith(SDXL_REFINER_PREFIX) for key in shapes):
        raise CheckpointError(f"{source} is an SDXL refiner, which is not supported; pass an SDXL base checkpoint")
    elif any(key.startswith("cond_stage_model.model.") for key in shapes):
        family, required = "sd2", (SD2_OPEN_CLIP,)
    elif any(key.startswith("cond_stage_model.transformer.") for key in shapes):
        if SD1_CLIP not in shapes and SD1_CLIP_OLD_LAYOUT in shapes:
            raise CheckpointError(
                f"{source} stores its text encoder in an old layout (no 'text_model.' in the keys); "
                "re-save it with a current tool (e.g. A1111's checkpoint merger) or convert it to diffusers"
            )
        family, required = "sd1", (SD1_CLIP,)
    else:
        raise CheckpointError(
            f"{source} has a UNet but no text encoder (cond_stage_model.* / conditioner.*); "
            f"UNet-only files are not supported; {USAGE}"
        )
    missing = [key for key in required if key not in shapes]
    if not any(key.startswith(VAE_PREFIX) for key in shapes):
        missing.append(f"{VAE_PREFIX}* (the VAE)")
    if missing:
        raise CheckpointError(
            f"{source} looks like {FAMILY_LABELS[family]} but lacks {', '.join(missing)}; "
            "it is incomplete or not a full checkpoint"
        )
    prediction_type: PredictionType = "v_prediction" if V_PRED_MARKER in shapes or family == "sd2" else "epsilon"
    return CheckpointKind(family, prediction_type, inpainting=in_channels == INPAINTING_CHANNELS)


def sidecar_prediction_type(path: Path) -> PredictionType | None:
    """A1111 reads `<checkpoint>.yaml` next to the file; `parameterization: "v"` means v-prediction.

    A sidecar without it means epsilon (A1111's v2-inference.yaml for SD 2.x 512-base).
    """
    sidecar = path.with_suffix(".yaml")
    if not sidecar.is_file():
        return None
    try:
        parameterization = yaml.safe_load(sidecar.read_text())["model"]["params"].get("parameterization")
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"{sidecar} is not an LDM model config (need model.params; {err!r}); fix it or remove it"
        ) from err
    return "v_prediction" if parameterization == "v" else "epsilon"


def check_unet_matches_config(
    shapes: Mapping[str, tuple[int, ...]], config_dir: Path, kind: CheckpointKind, source: str
) -> None:
    """Fail with a clear message, rather than a shape error deep in diffusers, on an odd UNet."""
    unet_config = _read_json(config_dir / "unet" / "config.json")
    context_dims = {
        shape[-1] for key, shape in shapes.items() if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")
    }
    expected = unet_config["cross_attention_dim"]
    if context_dims != {expected}:
        raise CheckpointError(
            f"{source} looks like {kind.label} but its UNet cross-attention width is "
            f"{sorted(context_dims) or 'missing'}, not {expected}; it is not a standard {kind.label} model"
        )
    model_channels = shapes[UNET_CONV_IN][0]
    if model_channels != unet_config["block_out_channels"][0]:
        raise CheckpointError(
            f"{source} looks like {kind.label} but its UNet has {model_channels} base channels, not "
            f"{unet_config['block_out_channels'][0]} (distilled or pruned architectures are not supported)"
        )


def build_scheduler(config_dir: Path, prediction_type: PredictionType) -> SchedulerMixin:
    """The family's published scheduler, with the prediction type this checkpoint was trained for."""
    config = _read_json(config_dir / "scheduler" / "scheduler_config.json")
    scheduler_class = SCHEDULER_CLASSES[config["_class_name"]]
    scheduler = scheduler_class.from_config(config, prediction_type=prediction_type)
    assert isinstance(scheduler, SchedulerMixin)  # from_config returns a tuple only when asked to
    return scheduler


def _read_json(path: Path) -> dict[str, Any]:
    """A bundled (or test) config file, always a JSON object."""
    return cast(dict[str, Any], json.loads(path.read_text()))
