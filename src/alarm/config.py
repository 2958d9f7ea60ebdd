"""Recipes: one YAML file per experiment, validated, with ``key=value`` overrides from the command line.

Unknown keys and wrong types fail with one line naming the key (``ppo.learnig_rate: unknown setting``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo

from alarm.combine import CombineConfig, RewardSet
from alarm.errors import AlarmError
from alarm.io import read_text
from alarm.selection import DEFAULT_MAX_CONFLICT
from alarm.trainers.configs import PPOConfig

_STRICT = ConfigDict(extra="forbid")


class ModelSpec(BaseModel):
    """The policy to train."""

    model_config = _STRICT
    name: str = Field("smollm2-135m-instruct", description=(
        "the policy: an alias (smollm2-135m-instruct, the offline SmolLM2), a local path, a hub id, a run "
        "directory or a checkpoint; the paper: T5-large (QA), mT5-base (MT)"))
    trust_remote_code: bool = Field(False, description="allow the model's own code from the hub (transformers' "
                                    "trust_remote_code); only for models you trust")


class DataSpec(BaseModel):
    """The prompts: which task's data, where it lies, which splits."""

    model_config = _STRICT
    task: Literal["qa", "qa_feedback", "mt", "hh", "tldr"] = Field("qa", description=(
        "qa: QA JSONL (alarm.data.qa); qa_feedback: QA-Feedback prompt files with every passage, the paper's "
        "inputs; mt: parallel pairs (alarm.data.mt); hh / tldr: the VCB paper's Anthropic HH dialogues and "
        "TL;DR posts"))
    path: str | None = Field(None, description=(
        "qa: a QA JSONL (null: the packaged quickstart set); qa_feedback: a prompt file or URL ({split} in it: "
        "one file per split); mt: a JSONL/TSV file or europarl; hh / tldr: a hub id (Anthropic/hh-rlhf, "
        "trl-lib/tldr), a local JSONL, or null for the packaged offline stand-in"))
    train_split: str = Field("train", description="the split the policy trains on")
    test_split: str = Field("test", description="the split the evaluation (and VCB's held-out diagnostics) use")
    max_train_prompts: int | None = Field(None, ge=1, description="use at most this many training prompts "
                                          "(null: all)")
    system_prompt: str | None = Field(None, description="a system message put before every prompt in the "
                                      "chat template (null: none)")
    max_prompt_tokens: int | None = Field(None, ge=16, description=(
        "the policy input's token budget: qa_feedback cuts the passages (null: 1024, the paper's), hh drops "
        "the earliest exchanges, tldr cuts the post"))
    split_seed: int = Field(42, description=(
        "qa_feedback with one prompt file: the seed of its 80/20 split by question (the reward models' split "
        "uses 42 too); hh / tldr: the order a hub split is read in and the 90/10 split of a local file"))


class RewardsSpec(BaseModel):
    """Rewards by type; each entry is ``{type: <kind>, <constructor settings>...}``."""

    model_config = _STRICT
    encoder: str | None = Field(None, description="the sentence-transformers model of the embedding rewards "
                                "(null: the packaged all-MiniLM-L6-v2)")
    holistic: dict[str, Any] | None = Field(None, description=(
        "the holistic reward, {type: <reward type>, <its settings>} (the paper: UltraRM-13b); null: none"))
    aspects: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "the aspect rewards by name, each {type: <reward type>, <its settings>} (the paper's QA: factuality, "
        "relevance, completeness; MT: grammar, readability, language confidence)"))
    normalize: list[str] = Field(default_factory=lambda: ["holistic"], description=(
        "the rewards z-normalised with the initial policy's samples (holistic and sequence-level aspects)"))


class SelectionSpec(BaseModel):
    """Reward selection: which aspect rewards agree with the holistic one (docs/method.md §2.3)."""

    model_config = _STRICT
    enabled: bool = Field(True, description="run reward selection before training")
    max_conflict: float | None = Field(DEFAULT_MAX_CONFLICT, ge=0, le=1, description=(
        "keep the aspects whose conflict rate with the holistic reward is at most this (null: no threshold)"))
    top_k: int | None = Field(None, ge=1, description="keep at most the k least conflicting aspects (null: no "
                              "limit)")
    min_decisive: float = Field(0.0, ge=0, le=1, description=(
        "drop an aspect that is decisive (not tied) on fewer than this share of pairs: the conflict rate "
        "alone favours tie-heavy aspects"))
    apply: bool = Field(True, description="train only on the kept aspects (false: report the selection, train "
                        "on every aspect)")
    pairs: Literal["greedy_vs_sample", "two_samples"] = Field("greedy_vs_sample", description=(
        "the paper's pairs: the initial policy's greedy output vs a pure sample (T 1, top-p 1, top-k 0) per "
        "prompt; two_samples: the first two of sample.samples_per_prompt"))


class SampleSpec(BaseModel):
    """Sampling from the initial policy to fit normalisation (and to pair responses for selection)."""

    model_config = _STRICT
    prompts: int = Field(16, ge=1, description="training prompts sampled")
    samples_per_prompt: int = Field(2, ge=2, description="samples per prompt")
    max_new_tokens: int = Field(64, ge=1, description="the longest sample, in tokens")
    batch_size: int = Field(16, ge=1, description="sequences per generate() call")


class EvalSpec(BaseModel):
    """The evaluation after training: the initial and the trained policy's answers to the test prompts (greedy, or
    the mean of a few samples per prompt)."""

    model_config = _STRICT
    max_new_tokens: int = Field(64, ge=1, description="the longest answer, in tokens")
    batch_size: int = Field(16, ge=1, description="sequences per generate() call")
    samples: int = Field(0, ge=0, description=(
        "0: one greedy answer per test prompt; k ≥ 1: k sampled answers per prompt (as training samples them), "
        "each score averaged over them question by question — the policy PPO trains, with less noise per "
        "question than one greedy answer; both policies are sampled with the same seed"))
    temperature: float = Field(1.0, gt=0, description="the sampling temperature when samples ≥ 1")
    max_prompts: int | None = Field(None, ge=1, description="evaluate on at most this many test prompts (null: "
                                    "all)")


class RunSpec(BaseModel):
    """The sections every run shares (PPO and VCB recipes extend it): what to train, on what, with which rewards."""

    model_config = _STRICT
    name: str = Field("run", description="the run's name (its default directory is runs/<name>)")
    output_dir: str | None = Field(None, description="the run directory (null: runs/<name>)")
    seed: int = Field(42, description="the run's seed: sampling, selection, evaluation, and the trainer unless "
                      "its section sets its own")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the policy")
    data: DataSpec = Field(default_factory=DataSpec, description="the prompts")
    rewards: RewardsSpec = Field(default_factory=RewardsSpec, description="the holistic and aspect rewards")
    combine: dict[str, Any] = Field(default_factory=dict, description=(
        "how the rewards combine (alarm.combine.CombineConfig: mode, holistic_weight, epsilon, ...)"))

    @model_validator(mode="after")
    def _the_run_seed_seeds_the_trainer(self):
        """``seed`` is the run's seed: the trainer's section (ppo / vcb) takes it unless it sets its own seed."""
        for section in ("ppo", "vcb"):
            trainer = getattr(self, section, None)
            if trainer is not None and "seed" not in trainer.model_fields_set:
                trainer.seed = self.seed
        return self

    def combine_config(self) -> CombineConfig:
        return build_dataclass(CombineConfig, self.combine, "combine")

    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


class Recipe(RunSpec):
    """A PPO run (`alarm run / train / quickstart`)."""

    sample: SampleSpec = Field(default_factory=SampleSpec, description="the initial policy's samples")
    selection: SelectionSpec = Field(default_factory=SelectionSpec, description="reward selection")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO training")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="the evaluation")


# ------------------------------------------------------------------------------------- describing settings

# The model of a section that a run keeps as a mapping and builds when it needs it.
SECTION_MODELS: dict[str, type] = {"combine": CombineConfig}
REQUIRED = object()  # the default of a setting that has none


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting of a settings model, as the references and ``alarm config show`` print it."""

    name: str
    type: str
    default: Any  # REQUIRED when the setting must be given
    description: str | None
    section: type | None = None  # the settings model of a nested section (ppo, data, combine, ...)


def type_name(tp) -> str:
    """``int``, ``float | None``, ``Literal['qa', 'mt']``: a type as a reader writes it."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def settings_of(cls) -> list[Setting]:
    """The settings of a pydantic model or of a dataclass section (``Field(description=...)`` in
    ``Annotated``), in the order they are declared."""
    out = []
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        for name, f in cls.model_fields.items():
            section = f.annotation if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel) else None
            if section is None and issubclass(cls, RunSpec):
                section = SECTION_MODELS.get(name)
            default = REQUIRED if f.is_required() else f.get_default(call_default_factory=True)
            out.append(Setting(name, type_name(f.annotation), default, f.description, section))
        return out
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        infos = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, FieldInfo)]
        tp = typing.get_args(hint)[0] if infos else hint
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else (
            REQUIRED if f.default is dataclasses.MISSING else f.default)
        out.append(Setting(f.name, type_name(tp), default, infos[0].description if infos else None))
    return out


def build_dataclass(cls, settings: dict, where: str):
    """``cls(**settings)`` through pydantic's typed validation, so a dataclass section (``combine``) fails like
    every other section: one line naming ``where.key``, numbers given as strings (``"5e0"``) read as numbers."""
    if not isinstance(settings, dict):
        raise AlarmError(f"{where}: must be a mapping of settings (got {settings!r})")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise AlarmError(unknown_setting(f"{where}.{unknown[0]}", sorted(names)))
    try:
        return TypeAdapter(cls).validate_python(settings)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join([where, *(str(x) for x in err["loc"])])
        raise AlarmError(f"{loc}: {err['msg']} (got {err.get('input')!r})") from None


def unknown_setting(key: str, valid: list[str], what: str = "setting") -> str:
    """One line for a key that is not a setting: the closest valid one, then all the valid ones of its section."""
    name, section = key.rsplit(".", 1)[-1], key.rpartition(".")[0]
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {section + '.' if section else ''}{close[0]}?" if close else ""
    return f"{key}: unknown {what}{hint} (valid{' in ' + section if section else ''}: {', '.join(valid)})"


def section_model(model_cls, path) -> type[BaseModel] | None:
    """The settings model at ``path`` (e.g. ``("ppo",)``) below ``model_cls``, or None where there is none."""
    for part in path:
        field = model_cls.model_fields.get(str(part)) if isinstance(model_cls, type) else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model_cls = annotation
    return model_cls


def _format_validation_error(e: ValidationError, model_cls=None) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        section = section_model(model_cls, err["loc"][:-1]) if model_cls is not None else None
        if section is not None:
            return unknown_setting(loc, list(section.model_fields))
        return f"{loc}: unknown setting; check its spelling against the documented keys"
    if not err["loc"]:  # a check across settings: the whole config is not worth echoing
        return err["msg"].removeprefix("Value error, ")
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``5e0`` and ``1e-5`` (no dot) as strings; here they are numbers, as in YAML 1.2."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(text: str):
    """``yaml.safe_load`` with numbers in exponent form read as numbers (recipes and overrides alike)."""
    return yaml.load(text, Loader=_Loader)


def parse_overrides(pairs: list[str]) -> dict:
    """``["ppo.steps=3", "combine.mode=weighted_sum"]`` → nested dict (values parsed as YAML scalars)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise AlarmError(f"override {pair!r} must look like key=value (e.g. ppo.steps=10)")
        key, raw = pair.split("=", 1)
        value = load_yaml(raw) if raw else None
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise AlarmError(f"override {pair!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_settings(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """A recipe file's settings (empty without a file) with ``key=value`` overrides merged in."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise AlarmError(f"recipe {p} not found; give a YAML file path (see recipes/)")
        try:
            data = load_yaml(read_text(p, "recipe")) or {}
        except yaml.YAMLError as e:
            raise AlarmError(f"recipe {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise AlarmError(f"recipe {p} must be a mapping of settings at the top level")
    return _merge(data, parse_overrides(overrides or []))


def validate_settings(model_cls, data: dict):
    """``model_cls.model_validate(data)`` with the first problem as a one-line AlarmError naming the key."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise AlarmError(_format_validation_error(e, model_cls)) from None


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    return validate_recipe(read_settings(path, overrides))


def validate_recipe(data: dict, model_cls=Recipe):
    """A recipe (``model_cls``: :class:`Recipe`, or another :class:`RunSpec`) validated whole: settings, the
    combine section and every reward's settings, before anything loads."""
    recipe = validate_settings(model_cls, data)
    recipe.combine_config()  # validate now, not mid-run
    for where, spec in _reward_specs(recipe.rewards):
        _check_reward_spec(where, spec)
    return recipe


# ---------------------------------------------------------------------------------------- reward building


def _reward_classes() -> dict[str, Any]:
    from alarm.reward_models.evidence import EvidenceReward
    from alarm.reward_models.grounding_bt import GroundingBTReward
    from alarm.rewards.embedding import GroundingReward, ReferenceSimilarityReward, RelevanceReward
    from alarm.rewards.grammar import GrammarReward
    from alarm.rewards.hf_models import SequenceClassifierReward, SpanRewardModel
    from alarm.rewards.remote import RemoteReward
    from alarm.rewards.simple import LanguageConfidenceReward, LengthReward, ReadabilityReward

    return {
        "length": LengthReward,
        "readability": ReadabilityReward,
        "language_confidence": LanguageConfidenceReward,
        "reference_similarity": ReferenceSimilarityReward,
        "grounding": GroundingReward,
        "relevance": RelevanceReward,
        "grammar": GrammarReward,
        "sequence_classifier": SequenceClassifierReward.from_pretrained,
        "span_model": SpanRewardModel.from_pretrained,
        "grounding_bt": GroundingBTReward,
        "evidence_model": EvidenceReward,  # alarm.reward_models.evidence: reads question + passages column
        "remote": RemoteReward,  # a reward model served over HTTP (vLLM, TEI, OpenRLHF, plain JSON)
    }


_ENCODER_TYPES = {"reference_similarity", "grounding", "relevance"}
_NAMED_BY_CONSTRUCTOR = {"sequence_classifier", "span_model", "grounding_bt", "evidence_model"}


def _reward_specs(spec: RewardsSpec):
    if spec.holistic is not None:
        yield "rewards.holistic", spec.holistic
    for k, v in spec.aspects.items():
        yield f"rewards.aspects.{k}", v


def reward_types() -> dict[str, Any]:
    """The reward types a recipe's ``rewards`` section can name (``type: grounding``), each with what builds it."""
    return _reward_classes()


def reward_settings(kind: str) -> dict[str, Any] | None:
    """A reward type's settings with their defaults (REQUIRED where there is none), read from what builds it;
    None when it takes any keyword."""
    build = _reward_classes()[kind]
    params = dict(inspect.signature(build).parameters)
    owner = getattr(build, "__self__", None)
    if isinstance(owner, type) and any(p.kind == p.VAR_KEYWORD for p in params.values()):
        # from_pretrained(path, ..., **kw): the keywords go to the class's constructor, after model and tokenizer
        params = {n: p for n, p in params.items() if p.kind != p.VAR_KEYWORD}
        init = inspect.signature(owner.__init__).parameters
        params.update({n: p for n, p in init.items() if n not in ("self", "model", "tokenizer")})
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    out = {n: REQUIRED if p.default is p.empty else p.default for n, p in params.items() if n not in ("self", "encoder")}
    if kind in ("sequence_classifier", "span_model"):
        out["prompt_with_passages"] = False  # {prompt} = question + passages (QA-Feedback reward models)
    return out


def _check_reward_spec(where: str, spec: dict) -> None:
    classes = _reward_classes()
    kind = spec.get("type")
    if kind not in classes:
        close = difflib.get_close_matches(str(kind), list(classes), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise AlarmError(f"{where}.type: {kind!r} is not a reward type{hint} (valid: {', '.join(classes)})")
    allowed = reward_settings(kind)
    if allowed is None:
        return
    for key in spec:
        if key != "type" and key not in allowed:
            raise AlarmError(unknown_setting(f"{where}.{key}", sorted(allowed), f"setting for {kind}"))


def build_reward(where: str, spec: dict, encoder_name: str | None, default_name: str):
    _check_reward_spec(where, spec)
    kwargs = {k: v for k, v in spec.items() if k not in ("type", "prompt_with_passages")}
    kind = spec["type"]
    if kind in _ENCODER_TYPES:
        from alarm.rewards.embedding import load_encoder

        kwargs["encoder"] = load_encoder(encoder_name)
    if kind in _NAMED_BY_CONSTRUCTOR:
        kwargs.setdefault("name", default_name)
    reward = _reward_classes()[kind](**kwargs)
    if kind not in _NAMED_BY_CONSTRUCTOR and "name" not in spec:
        reward.name = default_name
    if spec.get("prompt_with_passages"):
        # Reward models trained on QA-Feedback read "question + passages"; the trainer passes the question.
        from alarm.data.qa_feedback import PassagePrompt

        reward = PassagePrompt(reward)
    return reward


def build_reward_set(recipe: RunSpec, aspects: list[str] | None = None) -> RewardSet:
    """The recipe's rewards as a :class:`RewardSet` (only ``aspects`` if given, e.g. after selection)."""
    spec = recipe.rewards
    holistic = build_reward("rewards.holistic", spec.holistic, spec.encoder, "holistic") if spec.holistic else None
    names = list(spec.aspects) if aspects is None else aspects
    built = {k: build_reward(f"rewards.aspects.{k}", spec.aspects[k], spec.encoder, k) for k in names}
    normalize = [k for k in spec.normalize if k == "holistic" or k in built]
    return RewardSet(recipe.combine_config(), holistic=holistic, aspects=built, normalize=normalize)

