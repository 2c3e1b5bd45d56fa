"""Typed configuration profiles loaded from ``configs/*.yaml``.

Each stage owns its config dataclass next to its code (nanoGPT style: ``VQVAEConfig`` lives in
``models/vqvae.py``); this module composes them into one :class:`Config` and loads YAML into it
strictly: an unknown key, a missing section or a value of the wrong type is a
:class:`~mmldm.errors.ConfigError` that names the file and the key.

A profile may start with ``base: <other profile>`` and then override only what differs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

# Each stage's config dataclass, defined next to its code and composed into Config below.
from mmldm.data.preprocess import DataConfig
from mmldm.diffusion.base_sampler import SamplerConfig
from mmldm.diffusion.guidance import GuidanceConfig
from mmldm.diffusion.schedule import DiffusionConfig
from mmldm.errors import ConfigError
from mmldm.evaluate.settings import EvaluationConfig
from mmldm.models.segmenter import SegmenterConfig
from mmldm.models.unet import UNetConfig
from mmldm.models.vqvae import VQVAEConfig
from mmldm.train.ema import EMAConfig
from mmldm.train.optim import TrainConfig, paper_ldm_training, paper_vqvae_training

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
PROFILES = ("paper", "laptop", "quick", "smoke")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists/dicts into their types."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {', '.join(_type_name(a) for a in args)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, where): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    prefix = f"{where}: " if where else ""
    if unknown:
        raise ConfigError(
            f"{prefix}unknown key(s) {', '.join(map(repr, unknown))}; {cls.__name__} accepts {', '.join(sorted(names))}"
        )
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix}{e}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """A config as plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping (plain YAML keeps the last,
    so a forgotten earlier line would silently lose)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}); keep one"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a profile file, resolving ``base:`` chains; returns the merged raw mapping.

    A key written twice in one mapping is an error (plain YAML would keep the last silently)."""
    path = Path(path)
    if path in _seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (profiles: {', '.join(PROFILES)})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is not None:
        data = _merge(read_yaml(resolve_profile(base, relative_to=path.parent), _seen + (path,)), data)
    return data


def resolve_profile(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """``'laptop'`` -> ``configs/laptop.yaml``; a path is returned as it is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_absolute() and relative_to is not None and (relative_to / p).exists():
            return relative_to / p
        return p
    return CONFIG_DIR / f"{name_or_path}.yaml"


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Apply one ``section.key=value`` override (value parsed as YAML) to a raw mapping."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


# --------------------------------------------------------------------------------------------
# Where things are: the data source, the HDF5 store, the run folder.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PathsConfig:
    """Where things are, relative to the repository root unless absolute.

    ``source`` is either ``"phantom"`` (the synthetic phantom, generated into ``phantom_dir`` on
    first use) or a folder holding real M&Ms-2, M&Ms or ACDC data as it unpacks. ``phantom_dir``,
    ``store``, ``runs`` and ``figures`` may use ``{profile}``, ``{source}`` (the dataset kind:
    ``phantom``, or the layout of the real folder, ``acdc``, ``mnms2`` or ``mnms``: ``format`` when
    set, else recognised), ``{subjects}`` and ``{run}``: ``name`` when set, else
    ``{source}_{profile}`` (``acdc_laptop``, ``mnms2_paper``, ``phantom_smoke``...). So runs on
    different kinds of data or profiles never share a run folder or store; two different folders of
    the same kind (ACDC training and testing, say) would, so the pipeline records the source in the
    run folder and refuses a different one there: give one of them a ``name``.

    Each run keeps to itself: the executed notebooks, the figures and the report all go under the
    run folder (``runs/{run}/``); ``./run_all.sh --publish`` copies the report into ``report/``.
    """

    source: str = "phantom"
    format: str = "auto"  # auto | mnms2 | mnms | acdc
    phantom_subjects: int = 360  # M&Ms-2 size
    phantom_seed: int = 0
    phantom_dir: str = "data/raw/phantom{subjects}"
    store: str = "data/processed/{run}.h5"
    runs: str = "runs/{run}"
    figures: str = "runs/{run}/figures"  # where notebooks and trainers save the report's figures
    name: str | None = None  # the run's name ({run}); None: {source}_{profile}

    def __post_init__(self):
        if self.format not in ("auto", "mnms2", "mnms", "acdc"):
            raise ValueError(f"format must be auto, mnms2, mnms or acdc, not {self.format!r}")
        if self.name is not None and (
            not self.name.strip() or self.name in (".", "..") or any(c in self.name for c in "/\\{}")
        ):
            raise ValueError(f"name must be a plain folder name (no / \\ {{ }}), not {self.name!r}")

    @property
    def is_phantom(self) -> bool:
        return self.source == "phantom"

    @property
    def reader_format(self) -> str:
        """The ``format`` to give the readers (the phantom is read as M&Ms-2, tagged phantom)."""
        return "phantom" if self.is_phantom else self.format

    @property
    def source_name(self) -> str:
        """The dataset kind: ``phantom``, ``format`` when set, else the recognised layout of the
        source folder (``data`` when there is none: the data step then says what is wrong)."""
        if self.is_phantom:
            return "phantom"
        if self.format != "auto":
            return self.format
        from mmldm.data.readers.layout import detect_format
        from mmldm.errors import DataError

        try:
            return detect_format(repo_path(self.source))
        except DataError:
            return "data"

    def run_name(self, profile: str) -> str:
        return self.name or f"{self.source_name}_{profile}"

    def _fill(self, template: str, profile: str) -> Path:
        source = self.source_name
        return repo_path(
            template.format(
                profile=profile, source=source, subjects=self.phantom_subjects, run=self.name or f"{source}_{profile}"
            )
        )

    def source_dir(self, profile: str = "") -> Path:
        return self._fill(self.phantom_dir, profile) if self.is_phantom else repo_path(self.source)

    def store_path(self, profile: str) -> Path:
        return self._fill(self.store, profile)

    def run_dir(self, profile: str) -> Path:
        return self._fill(self.runs, profile)

    def figures_dir(self, profile: str) -> Path:
        return self._fill(self.figures, profile)


def repo_path(p: str | Path) -> Path:
    """A config path: absolute as given, else relative to the repository root."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else CONFIG_DIR.parent / p


# --------------------------------------------------------------------------------------------
# The whole configuration: one section per stage, each dataclass defined next to its code.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Config:
    """A profile: every section a stage reads. Unknown keys anywhere are errors."""

    profile: str = "paper"
    paths: PathsConfig = dataclasses.field(default_factory=PathsConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    vqvae: VQVAEConfig = dataclasses.field(default_factory=VQVAEConfig)
    unet: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = dataclasses.field(default_factory=GuidanceConfig)
    train_vqvae: TrainConfig = dataclasses.field(default_factory=paper_vqvae_training)
    train_ldm: TrainConfig = dataclasses.field(default_factory=paper_ldm_training)
    ema: EMAConfig = dataclasses.field(default_factory=EMAConfig)
    segmenter: SegmenterConfig = dataclasses.field(default_factory=SegmenterConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)

    def __post_init__(self):
        if self.train_vqvae.ema or self.train_vqvae.latent_norm != "none":
            raise ValueError(
                "train_vqvae.ema and train_vqvae.latent_norm are LDM options: keep them false / none "
                "and set them in train_ldm"
            )
        # The UNet lives in the VQVAE's latent space: their shapes must agree.
        if self.unet.latent_channels != self.vqvae.latent_channels:
            raise ValueError(
                f"unet.latent_channels ({self.unet.latent_channels}) must equal "
                f"vqvae.latent_channels ({self.vqvae.latent_channels})"
            )
        factor = 2 ** sum(self.vqvae.down_sample)
        if self.unet.cond_downsample != factor:
            raise ValueError(
                f"unet.cond_downsample ({self.unet.cond_downsample}) must equal the VQVAE's "
                f"downsampling factor 2**{sum(self.vqvae.down_sample)} = {factor}"
            )
        if self.data.size % factor:
            raise ValueError(f"data.size ({self.data.size}) must be divisible by the VQVAE's factor {factor}")
        if self.data.size % self.segmenter.downsampling:
            raise ValueError(
                f"data.size ({self.data.size}) must be divisible by the segmenter's factor "
                f"{self.segmenter.downsampling} (2^(len(segmenter.channels) - 1))"
            )

    # Resolved paths of this profile (see PathsConfig).
    @property
    def source_dir(self) -> Path:
        return self.paths.source_dir(self.profile)

    @property
    def store_path(self) -> Path:
        return self.paths.store_path(self.profile)

    @property
    def run_dir(self) -> Path:
        return self.paths.run_dir(self.profile)

    @property
    def figures_dir(self) -> Path:
        return self.paths.figures_dir(self.profile)


def load_config(profile: str | Path = "laptop", overrides: list[str] | None = None) -> Config:
    """Load a profile by name (``configs/<name>.yaml``) or path, then apply ``KEY=VALUE`` overrides.

    >>> cfg = load_config("smoke", overrides=["data.size=32"])

    An error names the file when the file alone is wrong, else the first ``--set`` that makes it so.
    """
    path = resolve_profile(profile)
    data = read_yaml(path)
    data.setdefault("profile", path.stem)
    if not overrides:
        return from_dict(Config, data, where=str(path))
    applied = _apply_overrides(data, overrides)
    try:
        return from_dict(Config, applied, where=str(path))
    except ConfigError:
        from_dict(Config, data, where=str(path))  # the file alone is wrong: that error names the file
        for n in range(1, len(overrides) + 1):  # else the first override that breaks it is named
            try:
                from_dict(Config, _apply_overrides(data, overrides[:n]), where="")
            except ConfigError as e:
                raise ConfigError(f"--set {overrides[n - 1]}: {e}") from None
        raise


def _apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A deep copy of ``data`` with ``SECTION.KEY=VALUE`` overrides applied (values parsed as YAML)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected SECTION.KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        set_dotted(data, key.strip(), parsed)
    return data
