"""Reward models trained from human feedback (QA-Feedback): holistic Bradley–Terry, span models, completeness.

``alarm rm train --config recipes/rm_<kind>.yaml`` trains one; ``alarm rm evaluate --model DIR`` scores it on
the held-out questions. The saved directories load with ``SequenceClassifierReward.from_pretrained`` /
``SpanRewardModel.from_pretrained`` (see alarm.rewards.hf_models).
"""

from alarm.reward_models.train import RMTrainConfig, bradley_terry_loss, train_reward_model

__all__ = ["RMTrainConfig", "bradley_terry_loss", "train_reward_model"]
