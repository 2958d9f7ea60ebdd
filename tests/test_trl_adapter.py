"""The combination as a TRL reward function, run inside TRL's GRPOTrainer on a tiny random model."""

from __future__ import annotations

import math

import pytest

from alarm.combine import CombineConfig, RewardSet, as_trl_reward, trl_component_logger
from alarm.errors import AlarmError
from alarm.rewards.base import FunctionReward

trl = pytest.importorskip("trl")

CORPUS = [
    "Hello world, café résumé naïve. The quick brown fox jumps over the lazy dog.",
    "Question: what is the answer? Answer: the answer is here, eleven and seven.",
    "東京は日本の首都です。 emoji 😀🎉 fun!",
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def count_e(prompts, completions, **kwargs):
    return [float(c.count("e")) for c in completions]


def length(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def make_reward_set():
    rs = RewardSet(
        CombineConfig(mode="hierarchical", holistic_weight=3.0, epsilon_quantile=0.5),
        holistic=FunctionReward(count_e, name="count_e"),
        aspects={"length": FunctionReward(length, name="length")},
        normalize=("holistic", "length"),
    )
    fit = ["eee", "hello there", "x", "the answer", "fox jumps", "seven eleven", ""]
    rs.fit(["q"] * len(fit), fit)
    return rs


def test_reward_fn_contract_without_a_trainer():
    rs = make_reward_set()
    fn = as_trl_reward(rs, name="alarm_gate")
    assert fn.__name__ == "alarm_gate"
    # conversational completions: the last message's content is scored
    chat = [[{"role": "assistant", "content": "eeee eeee"}], [{"role": "assistant", "content": "zz"}]]
    out = fn(prompts=["q", "q"], completions=chat, completion_ids=[[1, 2], [3]], trainer_state=None)
    assert len(out) == 2 and all(isinstance(v, float) and math.isfinite(v) for v in out)
    assert out[0] > out[1]
    assert out == rs.sequence_rewards(["q", "q"], ["eeee eeee", "zz"])[0]
    assert fn.last_stats["gate_open_rate"] == 0.5
    logged = {}
    fn(prompts=["q", "q"], completions=["eeee eeee", "zz"], log_metric=logged.__setitem__)
    assert logged["alarm/gate_open_rate"] == 0.5 and logged["alarm/empty_rate"] == 0.0
    with pytest.raises(AlarmError, match="cannot read text"):
        fn(prompts=["q"], completions=[42])


def test_component_logger_adds_stats_to_the_logged_entry():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    rs = make_reward_set()
    fn = as_trl_reward(rs)
    fn(prompts=["q"], completions=["eee"])
    cb = trl_component_logger(fn)
    state = TrainerState()
    logs = {"loss": 1.0}
    state.log_history.append({**logs, "step": 1})  # what Trainer.log stores before calling on_log
    cb.on_log(TrainingArguments(output_dir="unused", report_to="none"), state, TrainerControl(), logs=logs)
    assert logs["alarm/gate_open_rate"] == 1.0
    assert state.log_history[-1]["alarm/gate_open_rate"] == 1.0


def test_grpo_two_steps_with_the_hierarchical_reward(tmp_path):
    import torch
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    tok = build_tokenizer()
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, tie_word_embeddings=True,
    ))
    rs = make_reward_set()
    fn = as_trl_reward(rs, name="alarm_gate")
    calls = []

    def reward(prompts, completions, **kwargs):
        out = fn(prompts, completions, **kwargs)
        calls.append((list(completions), out))
        return out

    reward.__name__ = "alarm_gate"
    reward.last_stats = fn.last_stats
    dataset = Dataset.from_dict({"prompt": ["Question: what is the answer?", "Hello world,", "The quick", "東京"]})
    args = GRPOConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=8, report_to="none", use_cpu=True, logging_steps=1, bf16=False,
        save_strategy="no", seed=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                          processing_class=tok, callbacks=[trl_component_logger(fn)])
    trainer.train()

    assert len(calls) >= 2  # TRL called the reward once per generation batch
    for completions, out in calls:
        assert out == rs.sequence_rewards(["q"] * len(completions), completions)[0]
    history = trainer.state.log_history
    train_logs = [h for h in history if "rewards/alarm_gate/mean" in h]
    assert len(train_logs) == 2
    for h in train_logs:
        assert "alarm/gate_open_rate" in h, sorted(h)
        assert 0.0 <= h["alarm/gate_open_rate"] <= 1.0
        assert "alarm/rewards/holistic/mean" in h and "alarm/hierarchy/violated" in h
    # the last logged stats are those of the last reward call
    assert train_logs[-1]["alarm/empty_rate"] == pytest.approx(
        sum(not c.strip() for c in calls[-1][0]) / len(calls[-1][0])
    )
