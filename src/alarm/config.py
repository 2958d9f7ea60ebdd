"""Recipes: one YAML file per experiment, validated, with ``key=value`` overrides from the command line.

Unknown keys and wrong types fail with one line naming the key (``ppo.learnig_rate: unknown setting``).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from alarm.combine import CombineConfig, RewardSet
from alarm.errors import AlarmError
from alarm.trainers.configs import PPOConfig

_STRICT = ConfigDict(extra="forbid")


class ModelSpec(BaseModel):
    model_config = _STRICT
    name: str = "smollm2-135m-instruct"  # alias for the offline SmolLM2, a local path, or a hub id
    trust_remote_code: bool = False


class DataSpec(BaseModel):
    model_config = _STRICT
    # qa: QA JSONL (alarm.data.qa); qa_feedback: QA-Feedback prompt files, every passage, the paper's inputs
    # (alarm.data.qa_feedback.paper_records); mt: parallel pairs (alarm.data.mt); hh / tldr: the VCB paper's
    # Anthropic HH dialogues and TL;DR posts (alarm.data.hh, alarm.data.tldr)
    task: Literal["qa", "qa_feedback", "mt", "hh", "tldr"] = "qa"
    # qa: None = the packaged quickstart set; qa_feedback: a prompt file or URL ({split} in it: one file per
    # split); mt: a JSONL/TSV file or "europarl"; hh / tldr: a hub id (Anthropic/hh-rlhf, trl-lib/tldr), a local
    # JSONL ({split} in it: one file per split) or None = the packaged offline stand-in
    path: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    max_train_prompts: int | None = Field(None, ge=1)
    system_prompt: str | None = None
    # the policy input's budget. qa_feedback: passages cut (None: 1024); hh: earliest exchanges dropped; tldr:
    # the post cut
    max_prompt_tokens: int | None = Field(None, ge=16)
    # qa_feedback with one prompt file: the seed of its 80/20 split by question. A property of the data, not of
    # the run: the reward models' `alarm rm train` split uses 42 too, so a run with another seed still trains
    # and evaluates on the questions the reward models saw / held out. hh / tldr: the order a hub split is read
    # in, and the 90/10 split of a local file without 'split' fields.
    split_seed: int = 42


class RewardsSpec(BaseModel):
    """Rewards by type; each entry is ``{type: <kind>, <constructor settings>...}``."""

    model_config = _STRICT
    encoder: str | None = None  # sentence-transformers model for embedding rewards; None = packaged MiniLM
    holistic: dict[str, Any] | None = None
    aspects: dict[str, dict[str, Any]] = Field(default_factory=dict)
    normalize: list[str] = Field(default_factory=lambda: ["holistic"])


class SelectionSpec(BaseModel):
    model_config = _STRICT
    enabled: bool = True
    max_conflict: float | None = Field(0.4, ge=0, le=1)
    top_k: int | None = Field(None, ge=1)
    min_decisive: float = Field(0.0, ge=0, le=1)
    apply: bool = True  # train only on the kept aspects
    # the paper's pairs: the initial policy's greedy output vs a pure sample (T 1, top-p 1, top-k 0) per prompt;
    # two_samples: the first two of sample.samples_per_prompt
    pairs: Literal["greedy_vs_sample", "two_samples"] = "greedy_vs_sample"


class SampleSpec(BaseModel):
    """Sampling from the initial policy to fit normalisation (and to pair responses for selection)."""

    model_config = _STRICT
    prompts: int = Field(16, ge=1)
    samples_per_prompt: int = Field(2, ge=2)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)


class EvalSpec(BaseModel):
    model_config = _STRICT
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    max_prompts: int | None = Field(None, ge=1)


class RunSpec(BaseModel):
    """The sections every run shares (PPO and VCB recipes extend it): what to train, on what, with which rewards."""

    model_config = _STRICT
    name: str = "run"
    output_dir: str | None = None  # default runs/<name>
    seed: int = 42
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    rewards: RewardsSpec = Field(default_factory=RewardsSpec)
    combine: dict[str, Any] = Field(default_factory=dict)  # CombineConfig settings

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

    sample: SampleSpec = Field(default_factory=SampleSpec)
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    eval: EvalSpec = Field(default_factory=EvalSpec)


def build_dataclass(cls, settings: dict, where: str):
    """``cls(**settings)`` through pydantic's typed validation, so a dataclass section (``combine``) fails like
    every other section: one line naming ``where.key``, numbers given as strings (``"5e0"``) read as numbers."""
    if not isinstance(settings, dict):
        raise AlarmError(f"{where}: must be a mapping of settings (got {settings!r})")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise AlarmError(f"{where}.{unknown[0]}: unknown setting (valid: {', '.join(sorted(names))})")
    try:
        return TypeAdapter(cls).validate_python(settings)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join([where, *(str(x) for x in err["loc"])])
        raise AlarmError(f"{loc}: {err['msg']} (got {err.get('input')!r})") from None


def _format_validation_error(e: ValidationError, model_cls=None) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        if model_cls is not None and len(err["loc"]) == 1:
            return f"{loc}: unknown setting (valid: {', '.join(model_cls.model_fields)})"
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
            data = load_yaml(p.read_text()) or {}
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


def _check_reward_spec(where: str, spec: dict) -> None:
    classes = _reward_classes()
    kind = spec.get("type")
    if kind not in classes:
        raise AlarmError(f"{where}.type: {kind!r} is not a reward type (valid: {', '.join(classes)})")
    params = inspect.signature(classes[kind]).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    allowed = set(params) - {"self", "encoder"}
    if kind in ("sequence_classifier", "span_model"):
        allowed.add("prompt_with_passages")
    for key in spec:
        if key != "type" and key not in allowed:
            raise AlarmError(f"{where}.{key}: unknown setting for {kind} (valid: {', '.join(sorted(allowed))})")


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

