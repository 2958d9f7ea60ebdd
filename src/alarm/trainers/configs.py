"""The trainers' settings, beside them (as TRL keeps a config next to each trainer) and free of torch, so
recipes validate a whole YAML file before anything heavy loads. Defaults are the papers' (docs/method.md §2.4, §2.5)."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError


class LoRASettings(BaseModel):
    """How the policy is adapted; PPOConfig and VCBConfig embed these (one set of defaults, docs/method.md §2.4)."""

    lora: bool = Field(True, description="train LoRA adapters, the reference being the same network with "
                       "adapters off (the paper's); false: full fine-tuning against a frozen copy")
    lora_r: int = Field(16, ge=1, description="LoRA rank (the paper: 16)")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling α (the paper: 32)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description=(
        "LoRA dropout (the paper: 0.05); acts only with disable_dropout: false"))
    lora_target_modules: list[str] | None = Field(None, description=(
        "the modules that get adapters (null: the attention projections found in the model)"))
    lora_layers: list[int] | None = Field(None, description=(
        "only these layer indices get adapters (null: every layer); the top layers only make the backward "
        "cheaper and let reuse_frozen_layers replay the rest"))
    # TRL switches dropout off too: two passes of the same weights then agree.
    disable_dropout: bool = Field(True, description=(
        "dropout off in the policy (LoRA's included), so PPO's ratio starts at 1 and VCB's Δρ at 0; false "
        "keeps it on in the training passes (the paper kept T5's)"))
    # The frozen bottom layers' output is computed once and replayed instead of recomputed: PPO keeps it from
    # sampling for the reference and update passes, VCB keeps each candidate's from its first pass.
    reuse_frozen_layers: bool = Field(True, description=(
        "with LoRA on the top layers only, replay the frozen bottom layers' output instead of recomputing it: "
        "the same numbers, less work (causal LMs, dropout off, not under FSDP or DeepSpeed)"))


class RunSettings(BaseModel):
    """What a trainer does besides training (its seed, checkpoints kept, where metrics go); PPOConfig and
    VCBConfig embed these."""

    seed: int = Field(42, description="the trainer's seed (default: the run's seed)")
    save_every: int = Field(0, ge=0, description=(
        "also keep every this many steps' checkpoint for good (0: only the last); whatever it is, the newest "
        "steps are saved as they finish (a crash costs at most the step in progress) while saving is cheap "
        "(≤ 2 s or ≤ 10 % of the training time since the last save), and only the newest two of those stay"))
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = Field("none", description=(
        "also send the metrics there (metrics.jsonl is always written)"))


class PPOConfig(LoRASettings, RunSettings):
    """PPO settings (plus the LoRA/dropout settings of :class:`LoRASettings`). Defaults are the paper's QA
    setting; MT used lr 5e-4, batch 32/16, 128 new tokens."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # sampling (training); evaluation is greedy elsewhere
    max_new_tokens: int = Field(200, ge=1, description="the longest training sample, in tokens (the paper: QA "
                                "200, MT 128)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature in training (the paper: 1)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling in training (the paper: 1, off)")
    top_k: int = Field(0, ge=0, description="top-k sampling in training (the paper: 0, off)")
    # optimisation
    learning_rate: float = Field(2e-4, gt=0, description="Adam learning rate (the paper: QA 2e-4, MT 5e-4)")
    rollout_batch_size: int = Field(8, ge=1, description="responses per step, per process (the paper: QA 8, "
                                    "MT 32)")
    samples_per_prompt: int = Field(1, ge=1, description=(
        "responses per prompt in a step: rollout_batch_size / samples_per_prompt prompts, each sampled this "
        "often"))
    # RLOO's baseline (Ahmadian et al. 2024): the update compares answers to the same question instead of easy
    # questions to hard ones — the noise a fresh critic cannot remove in a short run.
    group_baseline: bool = Field(False, description=(
        "subtract from a response's return the mean score of its prompt's other responses (RLOO's "
        "leave-one-out baseline; needs samples_per_prompt ≥ 2; not the paper's)"))
    mini_batch_size: int = Field(4, ge=1, description="responses per PPO update (the paper: QA 4, MT 16)")
    grad_accum_steps: int = Field(2, ge=1, description="mini-batches accumulated per optimizer step (the "
                                  "paper: 2)")
    ppo_epochs: int = Field(4, ge=1, description="passes over each rollout (the paper: 4)")
    max_grad_norm: float | None = Field(None, gt=0, description="clip the gradient norm to this (null: no "
                                        "clipping, the paper's)")
    weight_decay: float = Field(0.0, ge=0, description=(
        "AdamW weight decay; 0 is plain Adam, which the paper's trainer used (torch's AdamW default is 0.01)"))
    # A skipped mini-batch's loss is zeroed (so every process still runs the same backward) and counted in
    # ppo/skipped_minibatches.
    ratio_threshold: float | None = Field(10.0, gt=1, description=(
        "skip a mini-batch whose mean ratio π/π_old exceeds this, a diverged batch (the paper's trainer: 10; "
        "null: never)"))
    # advantage estimation and losses
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount γ (the paper: 1)")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ (the paper: 0.95)")
    whiten_advantages: bool = Field(True, description="whiten the advantages over the batch (the paper's)")
    cliprange: float = Field(0.2, gt=0, description="policy ratio clip (the paper: 0.2)")
    cliprange_value: float = Field(0.2, gt=0, description="value clip (the paper: 0.2)")
    vf_coef: float = Field(0.1, ge=0, description="value-loss weight (the paper: 0.1)")
    # A random critic puts noise into every token's GAE advantage (δ_t = V_{t+1} − V_t, summed with weights
    # λ^k: std ≈ σ_V·√(2/(1−λ²)) ≈ 4.5·σ_V at λ 0.95) until it has learnt.
    value_head_init: Literal["normal", "zeros"] = Field("normal", description=(
        "the critic's first values: normal (std 1/√(hidden+1)) or zeros (the first advantages carry only the "
        "reward)"))
    early_stop_kl: float = Field(0.15, gt=0, description=(
        "stop a rollout's PPO epochs once the approximate KL to the sampling policy exceeds this (the paper: "
        "1.5 × 0.1)"))
    # KL penalty against the reference policy
    kl_coef: float = Field(0.2, ge=0, description="the KL penalty's β, or its start when adaptive (the paper: "
                           "0.2)")
    adaptive_kl: bool = Field(True, description="adapt β towards adaptive_kl_target (the paper's); false: β "
                              "stays kl_coef")
    adaptive_kl_target: float = Field(6.0, gt=0, description="the KL to the reference that adaptive β aims at "
                                      "(the paper: 6)")
    kl_horizon: int = Field(10_000, ge=1, description="adaptive β's horizon, in responses (the paper: 10 000)")
    # run
    steps: int = Field(100, ge=1, description="PPO steps (one rollout and its updates each)")

    @model_validator(mode="after")
    def _check(self):
        if self.mini_batch_size > self.rollout_batch_size:
            raise ValueError(
                f"mini_batch_size ({self.mini_batch_size}) exceeds rollout_batch_size ({self.rollout_batch_size})"
            )
        if self.rollout_batch_size % self.samples_per_prompt:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                             f"samples_per_prompt ({self.samples_per_prompt})")
        if self.group_baseline and self.samples_per_prompt < 2:
            raise ValueError("group_baseline needs samples_per_prompt ≥ 2 (a prompt's other responses are the baseline)")
        return self


LossName = Literal["vcb", "vcb_hinge", "dpo", "ipo", "slic", "rrhf"]
# The losses' own settings: which losses read each one, and its default for each (docs/method.md §2.5).
# SLiC-HF (Zhao et al. 2023, eq. 1): margin δ 1, regularisation weight λ 0.5 — the values as we recall them from
# the paper's TL;DR runs, not re-checked against its text here. RRHF (Yuan et al. 2023): L = L_rank + L_ft, weight 1.
SLIC_MARGIN = 1.0
SFT_WEIGHT = {"slic": 0.5, "rrhf": 1.0}
LOSS_SETTINGS = {"slic_margin": ("slic",), "sft_weight": tuple(SFT_WEIGHT)}


class VCBConfig(LoRASettings, RunSettings):
    """Offline pair training. ``loss`` picks VCB (squared, default), its hinge variant, DPO, IPO, or the two
    order-based baselines of the VCB paper that need no reference model: SLiC-HF and RRHF."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    loss: LossName = Field("vcb", description=(
        "vcb (squared, our reconstruction of the paper's loss), vcb_hinge, dpo, ipo, or the reference-free "
        "baselines slic (SLiC-HF) and rrhf"))
    beta: float = Field(0.1, gt=0, description=(
        "β of vcb, vcb_hinge, dpo and ipo (the VCB paper: 0.1); for slic and rrhf it only scales the logged "
        "β·Δρ"))
    sigma: Literal["global", "prompt"] = Field("global", description=(
        "the reward standard deviation that normalises the value gaps: over all candidates, or per prompt"))
    pairs: Literal["all", "best_vs_rest"] = Field("all", description=(
        "the training pairs of a prompt's candidates: all pairs, or its best candidate against each other"))
    tie_tolerance: float = Field(1e-6, ge=0, description="drop the pairs with |r_i − r_j| at most this")
    slic_margin: float | None = Field(None, gt=0, description=(
        "slic only: the margin δ on log π(y⁺) − log π(y⁻) (null: 1.0)"))
    sft_weight: float | None = Field(None, ge=0, description=(
        "slic and rrhf: the weight of −log π(the prompt's best candidate) (null: slic 0.5, rrhf 1.0)"))
    # optimisation
    learning_rate: float = Field(5e-5, gt=0, description="Adam learning rate")
    batch_size: int = Field(8, ge=1, description="pairs per optimizer step (all processes together)")
    micro_batch_size: int = Field(4, ge=1, description="pairs per forward pass (gradient accumulation up to "
                                  "batch_size)")
    epochs: int = Field(1, ge=1, description="passes over the pairs")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides "
                                  "epochs; null: epochs decide)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient norm to this (null: no "
                                        "clipping)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay; 0 is plain Adam (torch's AdamW "
                                "default would be 0.01)")
    max_response_tokens: int | None = Field(None, ge=1, description="cut candidates to this many tokens "
                                            "(null: keep them whole)")
    frozen_layers_max_gb: float = Field(2.0, ge=0, description=(
        "reuse_frozen_layers: keep at most this many GB (CPU memory, per process) of frozen-layer states; "
        "candidates beyond it run whole"))
    # diagnostics
    eval_every: int = Field(0, ge=0, description="held-out diagnostics every this many steps (0: before "
                            "training and at the end only)")
    eval_at_start: bool = Field(True, description="diagnostics of the initial policy (step 0) too")
    eval_greedy: bool = Field(True, description="the mean reward of greedy answers to the held-out prompts "
                              "(needs the recipe's rewards)")
    eval_max_new_tokens: int = Field(64, ge=1, description="the longest greedy answer of the diagnostics, in "
                                     "tokens")
    eval_batch_size: int = Field(16, ge=1, description="sequences per generate() call in the diagnostics")

    @field_validator("slic_margin", "sft_weight")
    @classmethod
    def _only_for_its_losses(cls, v, info: ValidationInfo):
        loss, readers = info.data.get("loss"), LOSS_SETTINGS[info.field_name]
        if v is not None and loss is not None and loss not in readers:
            which = f"loss{'es' if len(readers) > 1 else ''} {' and '.join(readers)}"
            raise PydanticCustomError("loss_setting", f"read only by {which}, not by loss {loss}")
        return v

    @property
    def resolved_slic_margin(self) -> float:
        return SLIC_MARGIN if self.slic_margin is None else self.slic_margin

    @property
    def resolved_sft_weight(self) -> float:
        """The SFT weight the chosen loss uses (0 for the losses without an SFT term)."""
        return SFT_WEIGHT.get(self.loss, 0.0) if self.sft_weight is None else self.sft_weight
