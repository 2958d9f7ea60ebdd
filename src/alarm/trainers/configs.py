"""The trainers' settings, beside them (as TRL keeps a config next to each trainer) and free of torch, so
recipes validate a whole YAML file before anything heavy loads. Defaults are the papers' (docs/method.md §2.4, §2.5)."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    AliasChoices,
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

    lora: bool = True  # false: full fine-tuning, the reference is a frozen copy
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)  # acts only with disable_dropout: false
    lora_target_modules: list[str] | None = None  # None: the attention projections found in the model
    lora_layers: list[int] | None = None  # only these layer indices get adapters (a cheaper backward on CPU)
    # Dropout off in the policy (LoRA's included): two passes of the same weights then agree, so PPO's ratio
    # starts at 1 and VCB's Δρ at 0 (TRL does the same). false keeps dropout on in the training passes.
    disable_dropout: bool = True
    # LoRA on the top layers only (lora_layers): the frozen bottom layers' output is computed once and replayed
    # instead of recomputed — PPO keeps it from sampling for the reference and update passes, VCB keeps each
    # candidate's from its first pass. The same numbers, less work (causal LMs, dropout off, not under FSDP
    # or DeepSpeed).
    reuse_frozen_layers: bool = True


class PPOConfig(LoRASettings):
    """PPO settings (plus the LoRA/dropout settings of :class:`LoRASettings`). Defaults are the paper's QA
    setting; MT used lr 5e-4, batch 32/16, 128 new tokens."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # sampling (training); evaluation is greedy elsewhere
    max_new_tokens: int = Field(200, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    # optimisation
    learning_rate: float = Field(2e-4, gt=0)
    rollout_batch_size: int = Field(8, ge=1)  # responses per step, per process
    # Responses per prompt in a step (rollout_batch_size / samples_per_prompt prompts, each sampled this often).
    samples_per_prompt: int = Field(1, ge=1)
    # RLOO's baseline (Ahmadian et al. 2024): a response's return is reduced by the mean score of its prompt's
    # other responses, so the update compares answers to the same question instead of easy questions to hard
    # ones — the noise a fresh critic cannot remove in a short run. Needs samples_per_prompt ≥ 2.
    group_baseline: bool = False
    mini_batch_size: int = Field(4, ge=1)
    grad_accum_steps: int = Field(2, ge=1)
    ppo_epochs: int = Field(4, ge=1)
    max_grad_norm: float | None = Field(None, gt=0)
    # AdamW with weight_decay 0 is plain Adam, which the paper's trainer used (torch's AdamW default is 0.01).
    weight_decay: float = Field(0.0, ge=0)
    # The paper's trainer skipped a mini-batch whose mean ratio π/π_old exceeded 10 (a diverged batch); its
    # loss is zeroed (so every process still runs the same backward) and counted in ppo/skipped_minibatches.
    ratio_threshold: float | None = Field(10.0, gt=1)
    # advantage estimation and losses
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    whiten_advantages: bool = True
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    # The critic's first values: "normal" (std 1/√(hidden+1)) or "zeros". A random critic puts noise into every
    # token's GAE advantage (δ_t = V_{t+1} − V_t, summed with weights λ^k: std ≈ σ_V·√(2/(1−λ²)) ≈ 4.5·σ_V at λ 0.95)
    # until it has learnt; zeros start from advantages that carry only the reward.
    value_head_init: Literal["normal", "zeros"] = "normal"
    # early-stop a rollout's epochs when approx KL > factor × early_stop_kl (was `target_kl`: still read)
    early_stop_kl: float = Field(0.1, gt=0, validation_alias=AliasChoices("early_stop_kl", "target_kl"))
    early_stop_kl_factor: float = Field(1.5, gt=0)
    # KL penalty against the reference policy
    kl_coef: float = Field(0.2, ge=0)
    adaptive_kl: bool = True
    adaptive_kl_target: float = Field(6.0, gt=0, validation_alias=AliasChoices("adaptive_kl_target", "kl_target"))
    kl_horizon: int = Field(10_000, ge=1)
    # run
    steps: int = Field(100, ge=1)
    seed: int = 42
    save_every: int = Field(0, ge=0)  # 0: only at the end
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = "none"

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


class VCBConfig(LoRASettings):
    """Offline pair training. ``loss`` picks VCB (squared, default), its hinge variant, DPO, IPO, or the two
    order-based baselines of the VCB paper that need no reference model: SLiC-HF and RRHF."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    loss: LossName = "vcb"
    beta: float = Field(0.1, gt=0)  # vcb/vcb_hinge/dpo/ipo; for slic/rrhf it only scales the logged β·Δρ
    sigma: Literal["global", "prompt"] = "global"  # reward std used to normalise the value gaps
    pairs: Literal["all", "best_vs_rest"] = "all"
    tie_tolerance: float = Field(1e-6, ge=0)  # pairs with |r_i − r_j| ≤ this are dropped
    # slic only: the margin δ on log π(y⁺) − log π(y⁻) (None: 1.0)
    slic_margin: float | None = Field(None, gt=0)
    # slic and rrhf: weight of −log π(best candidate of the prompt) (None: slic 0.5, rrhf 1.0)
    sft_weight: float | None = Field(None, ge=0)
    # optimisation
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(8, ge=1)  # pairs per optimizer step (all processes together)
    micro_batch_size: int = Field(4, ge=1)  # pairs per forward pass (gradient accumulation below batch_size)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs
    max_grad_norm: float | None = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)  # AdamW with 0 is plain Adam (torch's AdamW default would be 0.01)
    max_response_tokens: int | None = Field(None, ge=1)  # truncate long candidates (None: keep whole)
    # reuse_frozen_layers: at most this much (GB of CPU memory, per process) of kept states; candidates beyond
    # it run whole
    frozen_layers_max_gb: float = Field(2.0, ge=0)
    # diagnostics
    eval_every: int = Field(0, ge=0)  # 0: before training and at the end only
    eval_at_start: bool = True  # diagnostics of the initial policy (step 0)
    eval_greedy: bool = True  # mean reward of greedy outputs on held-out prompts (needs a reward set)
    eval_max_new_tokens: int = Field(64, ge=1)
    eval_batch_size: int = Field(16, ge=1)
    # run
    seed: int = 42
    save_every: int = Field(0, ge=0)  # 0: only at the end
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = "none"

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
