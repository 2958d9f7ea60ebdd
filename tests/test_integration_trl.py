"""alarm.integrations.trl: the hierarchical reward inside TRL 1.16's GRPOTrainer, on a tiny random model."""

from __future__ import annotations

import asyncio
import math
import types
import warnings

import pytest
import tiny

from alarm.combine import CombineConfig, HierarchyWarning, RewardSet
from alarm.errors import AlarmError
from alarm.integrations.trl import AlarmReward, AsyncAlarmReward
from alarm.rewards.base import FunctionReward

trl = pytest.importorskip("trl")


def count_e(prompts, completions, **kw):
    return [float(c.count("e")) for c in completions]


def length(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


def reward_set(mode="hierarchical"):
    rs = RewardSet(CombineConfig(mode=mode, holistic_weight=3.0, epsilon_quantile=0.5),
                   holistic=FunctionReward(count_e, name="count_e"),
                   aspects={"length": FunctionReward(length, name="length")}, normalize=("holistic", "length"))
    fit = ["eee", "hello there", "x", "the answer", "fox jumps", "seven eleven", "", "ee e"]
    rs.fit(["q"] * len(fit), fit)
    return rs


BATCH = ["eeee eeee", "zz", "the quick brown fox", "", "e", "seventeen eleven"]


def test_one_pass_logs_every_component_and_the_split_sums_to_the_return():
    rs = reward_set()
    reward = AlarmReward(rs)
    metrics, extra = {}, {}
    chat = [[{"role": "assistant", "content": c}] for c in BATCH]
    out = reward(prompts=["q"] * len(BATCH), completions=chat, log_metric=metrics.__setitem__,
                 log_extra=extra.__setitem__, completion_ids=[[1]] * len(BATCH), trainer_state=None)
    assert out == rs.sequence_rewards(["q"] * len(BATCH), BATCH)[0]
    for key in ("alarm/gate_open_rate", "alarm/rewards/holistic/mean", "alarm/rewards/length/mean",
                "alarm/hierarchy/violated", "alarm/empty_rate", "alarm/return/mean"):
        assert key in metrics, sorted(metrics)
    assert metrics["alarm/hierarchy/violated"] == 0.0
    gates = extra["alarm/gate_open"]
    assert gates == reward.last.gate_open and True in gates and False in gates
    assert min(r for r, g in zip(out, gates) if g) > max(r for r, g in zip(out, gates) if not g)

    holistic, aspects = reward.split(types.SimpleNamespace(multi_objective_aggregation="sum_then_normalize"))
    assert (holistic.__name__, aspects.__name__) == ("alarm_holistic", "alarm_aspects")
    h, a = holistic(["q"] * len(BATCH), BATCH), aspects(["q"] * len(BATCH), BATCH)
    for r, hv, av, g in zip(out, h, a, gates):
        assert (av == 0.0) == (not g)  # 0 below ε (and for the empty response): never None towards TRL
        assert hv + av == pytest.approx(r)
        if g:
            assert av > 0  # shaped aspects: the gated part only adds
    with pytest.raises(AlarmError, match="cannot read text"):
        reward(prompts=["q"], completions=[42])


def test_split_is_refused_under_normalize_then_sum_and_unequal_weights_warn():
    from trl import GRPOConfig

    reward = AlarmReward(reward_set())
    args = GRPOConfig(output_dir="unused", multi_objective_aggregation="normalize_then_sum", report_to="none",
                      use_cpu=True, bf16=False)
    with pytest.raises(AlarmError, match="sum_then_normalize"):
        reward.split(args)
    ok = types.SimpleNamespace(multi_objective_aggregation="sum_then_normalize", reward_weights=[1.0, 2.0])
    with pytest.warns(HierarchyWarning, match="reward_weights"):
        reward.split(ok)
    with pytest.raises(AlarmError, match="normalize_then_sum"):  # the callback's check at train start
        reward.callback().on_train_begin(args, None, None)
    with pytest.warns(HierarchyWarning, match="other reward"):
        reward.check_args(ok, [reward, length])


def test_async_call_is_awaited_and_matches_the_sync_one():
    from trl.trainer.utils import is_async_callable

    rs = reward_set()
    sync, aio = AlarmReward(rs), AsyncAlarmReward(rs)
    assert is_async_callable(aio) and not is_async_callable(sync)
    prompts = ["q"] * len(BATCH)
    assert asyncio.run(aio(prompts, BATCH)) == sync(prompts, BATCH)
    h, a = aio.split(types.SimpleNamespace())
    assert is_async_callable(h) and is_async_callable(a)

    async def both():  # TRL gathers async rewards concurrently: one scoring pass serves both columns
        return await asyncio.gather(h(prompts, BATCH), a(prompts, BATCH))

    hv, av = asyncio.run(both())
    assert [x + (y or 0.0) for x, y in zip(hv, av)] == pytest.approx(sync(prompts, BATCH))


def _grpo(tmp_path, reward_funcs, steps=2, **cfg):
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    seen = []

    class Record(TrainerCallback):  # TRL keeps only the latest generation batch in _logs: copy it each step
        def on_step_end(self, args, state, control, **kw):
            logs = trainer._logs
            seen.append({"rewards": {k: list(v) for k, v in logs["rewards"].items()},
                         "extra": {k: list(v) for k, v in logs["extra"].items()},
                         "completion": list(logs["completion"]), "advantages": list(logs["advantages"])})

    data = Dataset.from_dict({"prompt": ["The quick", "Paris is", "A question:", "Water boils"]})
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=8, report_to="none", use_cpu=True, logging_steps=1, bf16=False,
                      save_strategy="no", seed=0, disable_tqdm=True, **cfg)
    trainer = GRPOTrainer(model=tiny.causal_lm(), reward_funcs=reward_funcs, args=args, train_dataset=data,
                          processing_class=tiny.tokenizer(), callbacks=[Record()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return trainer, seen


def test_grpo_trains_logs_components_and_the_gate_holds_on_logged_rewards(tmp_path):
    rs = reward_set()
    reward = AsyncAlarmReward(rs)  # the async path: TRL awaits it on its event loop
    trainer, seen = _grpo(tmp_path, [reward])
    train_logs = [h for h in trainer.state.log_history if "rewards/alarm/mean" in h]
    assert len(train_logs) == 2
    for h in train_logs:
        for key in ("alarm/gate_open_rate", "alarm/rewards/holistic/mean", "alarm/rewards/length/mean",
                    "alarm/hierarchy/violated"):
            assert key in h and math.isfinite(h[key]), sorted(h)
        assert h["alarm/hierarchy/violated"] == 0.0
    n_open = n_closed = 0
    for batch in seen:
        rewards, gates = batch["rewards"]["alarm"], batch["extra"]["alarm/gate_open"]
        assert len(rewards) == len(gates) == 8
        assert rewards == pytest.approx(rs.sequence_rewards(["q"] * 8, batch["completion"])[0])
        open_r = [r for r, g in zip(rewards, gates) if g]
        closed_r = [r for r, g in zip(rewards, gates) if not g]
        n_open, n_closed = n_open + len(open_r), n_closed + len(closed_r)
        if open_r and closed_r:
            assert min(open_r) > max(closed_r)  # the hierarchy, on what TRL logged
    assert n_open and n_closed  # both sides of the gate were exercised


def test_grpo_with_the_split_columns_sums_to_the_hierarchical_return(tmp_path):
    rs = reward_set()
    reward = AlarmReward(rs)
    args = types.SimpleNamespace(multi_objective_aggregation="sum_then_normalize")
    trainer, seen = _grpo(tmp_path, reward.split(args), steps=1)
    logged = trainer.state.log_history[0]
    assert "rewards/alarm_holistic/mean" in logged and "rewards/alarm_aspects/mean" in logged
    batch = seen[-1]
    h, a = batch["rewards"]["alarm_holistic"], batch["rewards"]["alarm_aspects"]
    expected = rs.sequence_rewards(["q"] * 8, batch["completion"])[0]
    assert not any(math.isnan(y) for y in [*h, *a])  # no None (NaN in TRL) from alarm
    total = [x + y for x, y in zip(h, a)]
    assert total == pytest.approx(expected, abs=1e-5)  # float32 in TRL
    assert 0.0 in a and any(y > 0 for y in a)  # both sides of the gate
    adv = batch["advantages"]
    for g in range(0, 8, 4):  # within each group TRL's advantages rank completions as R does
        for i in range(g, g + 4):
            for j in range(g, g + 4):
                if expected[i] > expected[j] + 1e-4:
                    assert adv[i] > adv[j]


def test_an_unscorable_completion_is_an_error_naming_it_or_a_logged_fallback():
    def strict(prompts, completions, **kw):
        return [float("nan") if "bad" in c else float(len(c)) for c in completions]

    rs = RewardSet(CombineConfig(mode="holistic_only"), holistic=FunctionReward(strict, name="strict"), normalize=())
    with pytest.raises(AlarmError, match="completion 1"):
        AlarmReward(rs)(["q", "q"], ["good", "bad"])
    metrics = {}
    with pytest.warns(UserWarning, match=r"response 1\).*fallback -1.0"):
        out = AlarmReward(rs, fallback=-1.0)(["q", "q"], ["good", "bad"], log_metric=metrics.__setitem__)
    assert out == [rs.sequence_rewards(["q"], ["good"])[0][0], -1.0]
    assert metrics["alarm/fallbacks"] == 1.0
