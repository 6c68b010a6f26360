"""The service spec a user writes: YAML -> typed, immutable model, with errors that say how to fix.

Every problem names the file, the field path (`resources.gpus[1]`), what is wrong and what to
write instead (spec_problems.py words them). Unknown keys are errors with a close-match suggestion,
so a typo never passes silently. GPU names are checked for form only: which GPUs exist is the
catalog's business.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpuroam.spec_problems import FieldError, problem, section
from gpuroam.yaml_text import YamlError, parse_yaml

_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_GPU = re.compile(r"[a-z0-9-]+")
_REGION_PATTERN = re.compile(r"[a-z0-9*?\[\]!-]+")
_NAME_MAX = 40


class SpecError(ValueError):
    """A spec that cannot be used. One line per problem, each `spec SOURCE: PATH: what; fix`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        # One line each, whatever a message holds (PyYAML's reader errors span two lines).
        self.problems = tuple(" ".join(line.strip() for line in problem.splitlines()) for problem in problems)
        super().__init__("\n".join(f"spec {source}: {problem}" for problem in self.problems))


def _gpu_name(value: str) -> str:
    if not _GPU.fullmatch(value):
        raise ValueError(f"{value!r} is not a GPU type name; use lowercase letters, digits and '-', e.g. nvidia-l4")
    return value


def _region_pattern(value: str) -> str:
    if not _REGION_PATTERN.fullmatch(value):
        raise ValueError(f"{value!r} can match no region; use lowercase names and wildcards * ? [ ], e.g. 'us-*'")
    return value


# Lists (what YAML and JSON give) fill these tuples: immutable, and strict mode alone wants tuples.
_Strings = Annotated[tuple[str, ...], Field(strict=False)]
_GpuNames = Annotated[tuple[Annotated[str, AfterValidator(_gpu_name)], ...], Field(strict=False)]
_RegionPatterns = Annotated[tuple[Annotated[str, AfterValidator(_region_pattern)], ...], Field(strict=False)]


# gs://bucket[/path] (bucket names: 3-63 of a-z 0-9 - _ .) or pvc:claim (a DNS-1123 subdomain).
COMPILE_CACHE_SOURCE = re.compile(
    r"gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]{1,512})?|pvc:[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
)


class _Section(BaseModel):
    # Frozen: a stored spec is a value. Forbid: a typo is an error, not an ignored key. Strict: YAML
    # gives real types, so "3" or `true` where a number belongs is a mistake (lists still fill tuples).
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class AppSpec(_Section):
    """What runs in each replica."""

    kind: Literal["sd-webui"] = Field(
        default="sd-webui", description="'sd-webui' (the AUTOMATIC1111 API; the only kind)"
    )
    image: str = Field(default="ghcr.io/gpuroam/worker:0.1.0", min_length=1, description="an image for clusters")
    port: int = Field(default=7860, ge=1, le=65535, description="the TCP port the app listens on, 1..65535")
    readiness_path: str = Field(default="/internal/ping", description="an HTTP path answering 200 once ready")
    args: _Strings = Field(default=(), description='a list of strings, extra app arguments (quote numbers: "20")')
    model: str = Field(default="tiny", min_length=1, description="tiny, sd15-random or a checkpoint path")
    compile_cache: str | None = Field(
        default=None,
        description="where a cluster's replicas share compiled kernels: gs://BUCKET[/PATH] (GKE: Cloud Storage "
        "FUSE) or pvc:CLAIM (a ReadWriteMany PersistentVolumeClaim); unset, each pod compiles into a volume of its own",
    )

    @field_validator("compile_cache")
    @classmethod
    def _cache_source(cls, source: str | None) -> str | None:
        if source is None or COMPILE_CACHE_SOURCE.fullmatch(source):
            return source
        raise ValueError(
            f"{source!r} is no compile cache location; write gs://BUCKET or gs://BUCKET/PATH (GKE), or pvc:CLAIM"
        )

    @field_validator("readiness_path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} does not start with '/'; write an absolute HTTP path, e.g. /internal/ping")
        return path


# Where replicas may run: on-demand only, Spot first with on-demand as the fallback, or Spot only.
SpotChoice = Literal["never", "prefer", "only"]


class ResourcesSpec(_Section):
    """The GPUs a replica needs, in order of preference: placement falls back down the list."""

    gpus: _GpuNames = Field(description="GPU types, most preferred first, e.g. [nvidia-l4, nvidia-tesla-t4]")
    gpu_count: int = Field(default=1, ge=1, le=16, description="GPUs per replica, an integer 1..16")
    spot: SpotChoice = Field(
        default="never",
        description="never (on-demand only), prefer (Spot where it can be had, on-demand otherwise) or only (Spot "
        "and no fallback); true means only (a Spot node selector, as true always did) and false means never",
    )
    on_demand_base: int = Field(
        default=0, ge=0, description="an integer >= 0, at most replicas.max: on-demand replicas Spot never replaces"
    )

    @field_validator("spot", mode="before")
    @classmethod
    def _spot_from_bool(cls, value: object) -> object:
        """Specs written before the choice said `spot: true` (Spot, no fallback) or `spot: false`."""
        if isinstance(value, bool):
            return "only" if value else "never"
        return value

    @field_validator("gpus")
    @classmethod
    def _some_and_distinct(cls, gpus: tuple[str, ...]) -> tuple[str, ...]:
        if not gpus:
            raise ValueError("no GPU types listed; list at least one in order of preference, e.g. [nvidia-l4]")
        for i, gpu in enumerate(gpus):
            if gpu in gpus[:i]:
                raise FieldError((i,), f"{gpu!r} is already at [{gpus.index(gpu)}]; list each GPU type once")
        return gpus


class RegionsSpec(_Section):
    """Where replicas may run: fnmatch wildcards, and deny wins, so exceptions read naturally."""

    allow: _RegionPatterns = Field(default=("*",), description='a list of region wildcards, e.g. ["us-*"]')
    deny: _RegionPatterns = Field(default=(), description='a list of region wildcards to exclude, e.g. ["asia-*"]')
    min_regions: int = Field(default=1, ge=1, description="an integer >= 1: regions to spread replicas over")

    @field_validator("allow")
    @classmethod
    def _some(cls, allow: tuple[str, ...]) -> tuple[str, ...]:
        if not allow:
            raise ValueError("is empty, so no region could be used; list wildcards such as ['us-*'], or ['*'] for all")
        return allow


class ReplicasSpec(_Section):
    """How many replicas: per region, and the total that must be ready (min) or may run (max)."""

    per_region: int = Field(default=1, ge=1, description="an integer >= 1: replicas in each region")
    min: int = Field(
        default=1, ge=0, description="an integer >= 0: ready replicas to keep (0: sleep when idle, needs autoscale)"
    )
    max: int = Field(
        default=8, ge=1, description="an integer >= replicas.min: most replicas at once (the autoscaler's cap)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReplicasSpec:
        if self.max < self.min:
            fix = f"raise replicas.max to at least {self.min} or lower replicas.min"
            raise FieldError(("max",), f"max ({self.max}) is below min ({self.min}); {fix}")
        return self


class PlacementSpec(_Section):
    """How placement hunts for capacity: racing, timeouts, and how long a failed pair is skipped."""

    # Defaults from the capacity simulation (`gpuroam sim`, bench/RESULTS.md, issue 9): racing 5 pairs
    # and waiting 900 s for a GPU node (launches take 2-15 minutes) beat 3 and 600 s on time to capacity;
    # racing one pair of a fallback GPU keeps a shortage of the first-choice GPU from slowing it.
    race: int = Field(default=5, ge=1, le=16, description="an integer 1..16: (region, GPU) pairs tried at once")
    race_fallback_gpu: bool = Field(
        default=True, description="true or false: race one pair of another GPU type while all tried share one"
    )
    provision_timeout_s: float = Field(default=900.0, gt=0, description="seconds > 0 a launch may take to be ready")
    block_ttl_s: float = Field(
        default=300.0, gt=0, description="seconds > 0 a (region, GPU) is skipped after a failure"
    )
    block_backoff: float = Field(default=2.0, ge=1, description="a number >= 1 multiplying the block per failure")
    block_max_s: float = Field(default=3600.0, gt=0, description="seconds >= block_ttl_s: the longest block")
    move_back_after_s: float = Field(default=120.0, ge=0, description="seconds >= 0 regained capacity must last first")

    @model_validator(mode="after")
    def _capped_above_first(self) -> PlacementSpec:
        if self.block_max_s < self.block_ttl_s:
            fix = f"raise placement.block_max_s to at least {self.block_ttl_s:g} or lower placement.block_ttl_s"
            raise FieldError(("block_max_s",), f"{self.block_max_s:g} is below block_ttl_s; {fix}")
        return self


class AutoscaleSpec(_Section):
    """Follow demand between replicas.min and replicas.max: out within seconds of a sustained queue,
    in after a quiet period, to zero after an idle one (with replicas.min: 0). Without this section
    a service keeps replicas.min."""

    target_in_flight: float = Field(
        default=4.0,
        gt=0,
        description="a number > 0: requests in flight (queued or generating) per unit of GPU speed (a T4 is 1)",
    )
    scale_up_after_s: float = Field(
        default=3.0, ge=0, description="seconds >= 0 a load above target must last before scaling out"
    )
    scale_down_after_s: float = Field(
        default=300.0, ge=0, description="seconds >= 0 capacity must be surplus before scaling in"
    )
    sleep_after_s: float = Field(
        default=900.0, gt=0, description="seconds > 0 without a request before a replicas.min: 0 service sleeps"
    )
    wake_ahead_s: float = Field(
        default=900.0,
        ge=0,
        description="seconds >= 0: a replicas.min: 0 service wakes this long before the time its day's first "
        "request came a day or a week ago (0: only a request wakes it)",
    )


class LimitsSpec(_Section):
    """What one request may ask of the service's GPUs. The replicas refuse more with a 422 that names the
    limit, before anything queues: one caller's request cannot hold a GPU for hours."""

    max_megapixel_steps: float = Field(
        default=1000.0,
        gt=0,
        description="a number > 0: width x height x steps x images per request, in millions (64 images of "
        "512x512 at 50 steps: 839)",
    )
    max_prompt_chars: int = Field(
        default=10_000, ge=1, description="an integer >= 1: characters of prompt, negative prompt and styles together"
    )

    def worker_args(self) -> tuple[str, ...]:
        """The `gpuroam worker` flags that enforce these limits."""
        return (
            "--max-megapixel-steps",
            f"{self.max_megapixel_steps:g}",
            "--max-prompt-chars",
            str(self.max_prompt_chars),
        )


SECRET_PREFIX = "secret:"


class TlsSpec(_Section):
    """HTTPS on the endpoint: PEM files the gateway reads (relative paths: to the spec's folder). On GKE, where
    Google's load balancer is the endpoint, `gcp_certificate` names a Compute Engine SSL certificate instead."""

    certificate: str | None = Field(default=None, min_length=1, description="a PEM certificate (chain) file")
    key: str | None = Field(default=None, min_length=1, description="the PEM private key file of that certificate")
    gcp_certificate: str | None = Field(
        default=None,
        pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="a Compute Engine SSL certificate's name (`gcloud compute ssl-certificates create`), for GKE",
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsSpec:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("give both 'certificate' and 'key' (PEM files), or neither")
        if self.certificate is None and self.gcp_certificate is None:
            raise ValueError("give 'certificate' and 'key' (PEM files), or 'gcp_certificate' on GKE")
        return self


class EndpointSpec(_Section):
    """What each caller of the endpoint may do (a caller: its API key, else its session, else its address)."""

    requests_per_minute: int | None = Field(
        default=None, ge=1, description="an integer >= 1: generation requests per caller per minute (unset: no limit)"
    )
    images_per_day: int | None = Field(
        default=None, ge=1, description="an integer >= 1: images per caller per UTC day (unset: no limit)"
    )
    max_in_flight: int = Field(
        default=64, ge=1, description="an integer >= 1: generation requests one caller may have in flight at once"
    )
    api_keys: str | None = Field(
        default=None,
        min_length=1,
        description="a keys file (one 'NAME: KEY' per line; relative to the spec's folder) or 'secret:NAME' (a "
        "Kubernetes Secret, one key per entry): the endpoint then serves only callers with one of those keys",
    )
    tls: TlsSpec | None = Field(
        default=None, description="a mapping: 'certificate' and 'key' (PEM files) for HTTPS on the endpoint"
    )

    def key_secret(self) -> str | None:
        """The Secret's name when the keys come from one (`secret:NAME`), else None."""
        if self.api_keys is not None and self.api_keys.startswith(SECRET_PREFIX):
            return self.api_keys.removeprefix(SECRET_PREFIX)
        return None

    def key_file(self) -> str | None:
        """The keys file's path when the keys come from a file, else None."""
        return self.api_keys if self.api_keys is not None and self.key_secret() is None else None


class ServiceSpec(_Section):
    """One service as the user wrote it; the controller stores it and placement reads it."""

    name: str = Field(description=f"a DNS-1035 label of at most {_NAME_MAX} characters, e.g. stable-diffusion")
    app: AppSpec = Field(default_factory=AppSpec, description="a mapping: what runs in each replica")
    resources: ResourcesSpec = Field(description="a mapping with at least 'gpus: [nvidia-l4]'")
    regions: RegionsSpec = Field(default_factory=RegionsSpec, description="a mapping: where replicas may run")
    replicas: ReplicasSpec = Field(default_factory=ReplicasSpec, description="a mapping: how many replicas")
    placement: PlacementSpec = Field(default_factory=PlacementSpec, description="a mapping: how to find capacity")
    autoscale: AutoscaleSpec | None = Field(
        default=None, description="a mapping (may be empty: the defaults): follow demand between min and max"
    )
    limits: LimitsSpec = Field(default_factory=LimitsSpec, description="a mapping: what one request may ask")
    endpoint: EndpointSpec = Field(default_factory=EndpointSpec, description="a mapping: what each caller may do")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: object) -> object:
        """A section with nothing under it (every key commented out) means its defaults."""
        if not isinstance(data, dict):
            return data
        return {key: {} if value is None and section(cls, key) else value for key, value in data.items()}

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if len(name) > _NAME_MAX:
            raise ValueError(f"is {len(name)} characters long; shorten it to at most {_NAME_MAX}")
        if not _NAME.fullmatch(name):
            fix = "use lowercase letters, digits and inner '-', starting with a letter, e.g. stable-diffusion"
            raise ValueError(f"{name!r} is not a DNS-1035 label; {fix}")
        return name

    @model_validator(mode="after")
    def _room_for_regions(self) -> ServiceSpec:
        regions, per_region, most = self.regions.min_regions, self.replicas.per_region, self.replicas.max
        if regions * per_region > most:
            what = f"{most} is below regions.min_regions ({regions}) x replicas.per_region ({per_region})"
            fix = f"raise replicas.max to at least {regions * per_region}, or lower min_regions or per_region"
            raise FieldError(("replicas", "max"), f"{what}; {fix}")
        return self

    @model_validator(mode="after")
    def _base_within_max(self) -> ServiceSpec:
        base, most = self.resources.on_demand_base, self.replicas.max
        if base > most:
            fix = f"lower resources.on_demand_base to at most {most} or raise replicas.max to {base}"
            raise FieldError(("resources", "on_demand_base"), f"{base} is above replicas.max ({most}); {fix}")
        return self

    @model_validator(mode="after")
    def _zero_needs_autoscale(self) -> ServiceSpec:
        if self.replicas.min == 0 and self.autoscale is None:
            fix = "add an autoscale: section (it wakes the service on the first request) or raise replicas.min to 1"
            raise FieldError(("replicas", "min"), f"0 means sleep when idle; {fix}")
        return self

    def region_allowed(self, region: str) -> bool:
        return region_matches(region, self.regions.allow, self.regions.deny)

    def gpu_rank(self, gpu: str) -> int | None:
        """0 for the most preferred GPU type; None for one the spec does not name."""
        gpus = self.resources.gpus
        return gpus.index(gpu) if gpu in gpus else None


def region_matches(region: str, allow: Iterable[str], deny: Iterable[str]) -> bool:
    """Allowed by some allow pattern and by no deny pattern: deny wins."""
    allowed = any(fnmatchcase(region, pattern) for pattern in allow)
    return allowed and not any(fnmatchcase(region, pattern) for pattern in deny)


def parse_spec(data: object, source: str = "<spec>") -> ServiceSpec:
    """Validate already-loaded data (a YAML or JSON document, or a stored spec_to_dict)."""
    if not isinstance(data, dict):
        what = f"the top level must be a mapping of fields, not {type(data).__name__}"
        raise SpecError(source, [f"{what}; start with 'name: my-service' and 'resources: {{gpus: [nvidia-l4]}}'"])
    try:
        return ServiceSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, [problem(error, ServiceSpec) for error in exc.errors()]) from None


def load_spec(path: str | Path) -> ServiceSpec:
    """Read a YAML spec file; every way it can fail is a SpecError that says what to do."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(source, ["file not found; check the path, or copy examples/stable-diffusion.yaml"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, [f"cannot read it ({exc}); pass a readable UTF-8 YAML file"]) from None
    try:
        data = parse_yaml(text)
    except YamlError as exc:
        raise SpecError(source, [str(exc)]) from None
    if data is None:
        raise SpecError(source, ["the file is empty; start from examples/stable-diffusion.yaml"])
    return _files_from(parse_spec(data, source), Path(path).resolve().parent)


def _files_from(spec: ServiceSpec, folder: Path) -> ServiceSpec:
    """The files a spec names (keys, certificates), made absolute from the spec's own folder: whoever reads
    them later (the control plane, the gateway) runs in another working directory."""

    def absolute(name: str | None) -> str | None:
        return None if name is None else str(folder / Path(name).expanduser())

    endpoint = spec.endpoint
    tls = endpoint.tls
    if tls is not None:
        tls = tls.model_copy(update={"certificate": absolute(tls.certificate), "key": absolute(tls.key)})
    keys = absolute(endpoint.key_file()) or endpoint.api_keys
    return spec.model_copy(update={"endpoint": endpoint.model_copy(update={"api_keys": keys, "tls": tls})})


def spec_to_dict(spec: ServiceSpec) -> dict[str, Any]:
    """Plain JSON-serialisable data for the state store; parse_spec turns it back into `spec`.

    An absent optional section stays absent (`autoscale: null` would read back as the empty section,
    which means its defaults)."""
    return spec.model_dump(mode="json", exclude_none=True)
