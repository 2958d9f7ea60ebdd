"""alarm's verl reward driven by verl 0.9.1's own reward-loop code (the wheel, installed --no-deps).

verl's reward loop imports ``ray`` at module level (the workers are Ray actors); ray is not installed here,
so ``ray`` (and its submodules) is the one import stubbed. Everything else is verl's released code: its
reward-manager registry and config loading (``load_reward_manager``), the ``naive`` and ``gdpo`` managers
(decoding with a real tokenizer, the extra_info keys they add), ``RewardLoopWorker.compute_score_batch``
(all responses of a worker concurrently) and ``RewardLoopManager.compute_rm_score`` (stacking the
per-response dicts, placing the score on the last token).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import types

import numpy as np
import pytest
import tiny
import torch

from alarm.combine import CombineConfig, RewardSet
from alarm.errors import AlarmError
from alarm.integrations import verl as alarm_verl
from alarm.rewards.base import FunctionReward


def _stub_ray() -> None:
    """A stand-in for ``ray`` good enough for verl's module-level uses (decorators, type hints)."""
    try:
        import ray  # noqa: F401
        return
    except ImportError:
        pass

    class _Meta(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Any

        def __getitem__(cls, item):
            return cls

        def __or__(cls, other):
            return cls

        __ror__ = __or__

    class _Any(metaclass=_Meta):
        def __init__(self, *a, **k):
            pass

        def __call__(self, *a, **k):
            return _Any()

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Any()

    def module_getattr(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Any

    for name in ["ray", "ray.actor", "ray.util", "ray.util.scheduling_strategies", "ray.util.placement_group",
                 "ray.experimental", "ray.experimental.state", "ray.experimental.state.api", "ray._private",
                 "ray._raylet", "ray.exceptions", "ray.runtime_env"]:
        mod = types.ModuleType(name)
        mod.__getattr__ = module_getattr
        sys.modules[name] = mod


if importlib.util.find_spec("verl") is None:
    pytest.skip("make install puts verl 0.9.1 (--no-deps) into .venv", allow_module_level=True)
_stub_ray()
from omegaconf import OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.experimental.reward_loop.reward_loop import RewardLoopManager, RewardLoopWorker  # noqa: E402
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls  # noqa: E402

RUN = "verl-test-run"  # the key under which the test's RewardSet is cached (no run directory needed)
SEEN: list[dict] = []  # the columns each scoring pass gave the holistic reward


def overlap(prompts, completions, reference=None, **columns):
    SEEN.append({**columns, **({"reference": reference} if reference is not None else {})})
    reference = reference or [None] * len(completions)
    out = []
    for p, c, r in zip(prompts, completions, reference):
        if "FAIL" in c:
            raise AlarmError("reward 'overlap' cannot read a response that says FAIL")
        out.append(float(len(set((r or "").split()) & set(c.split()))) + 0.05 * len(p))
    return out


def chars(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


@pytest.fixture()
def reward_set():
    rs = RewardSet(CombineConfig(mode="hierarchical", holistic_weight=5.0, epsilon=0.0),
                   holistic=FunctionReward(overlap, name="overlap"),
                   aspects={"chars": FunctionReward(chars, name="chars")}, normalize=("holistic", "chars"))
    fit = ["paris is the capital", "no idea", "the capital of france is paris", "x", "berlin", "water boils"]
    rs.fit(["capital of France?"] * len(fit), fit, reference=["paris capital france"] * len(fit))
    alarm_verl._SETS[(RUN, None, None)] = rs
    SEEN.clear()
    yield rs
    alarm_verl._SETS.pop((RUN, None, None), None)
    alarm_verl._GROUPS.clear()


RESPONSES = ["paris is the capital of france", "I do not know", "the capital is paris", "water boils at 100",
             "paris", "no"]
QUESTIONS = ["capital of France?", "capital of France?", "capital of France?", "boil?", "capital?", "capital?"]
TRUTHS = ["paris capital france", "paris capital france", "paris capital france", "water boils 100",
          "paris", "paris"]


def _config(tmp_path, fn: str, manager: str = "naive", **reward_kwargs):
    tok = tiny.tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    cfg = {
        "actor_rollout_ref": {"model": {"path": str(tmp_path / "tok"), "tokenizer_path": None}},
        "trainer": {"experiment_name": "alarm-test"},
        "reward": {
            "num_workers": 1,
            "reward_manager": {"source": "register", "name": manager, "module": {"path": None, "name": None}},
            "custom_reward_function": {"path": alarm_verl.__file__, "name": fn,
                                       "reward_kwargs": {"run": RUN, **reward_kwargs}},
            "reward_model": {"enable": False, "enable_resource_pool": False},
        },
    }
    return OmegaConf.create(cfg)


def _batch(responses=RESPONSES, questions=QUESTIONS, truths=TRUTHS) -> tuple[DataProto, list[str]]:
    """A rollout batch as verl's agent loop hands it to the reward loop: left-padded prompts, right-padded
    responses ending in EOS, the row's extra_info, and the keys the agent loop adds beside it."""
    tok = tiny.tokenizer()
    prompt_ids = [tok(f"Q: {q} A:")["input_ids"] for q in questions]
    resp_ids = [tok(r)["input_ids"] + [tok.eos_token_id] for r in responses]
    P, R = max(map(len, prompt_ids)), max(map(len, resp_ids)) + 2
    n = len(responses)
    prompts = torch.full((n, P), tok.pad_token_id)
    resp = torch.full((n, R), tok.pad_token_id)
    mask = torch.zeros((n, P + R), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, resp_ids)):
        prompts[i, P - len(p):] = torch.tensor(p)
        resp[i, :len(r)] = torch.tensor(r)
        mask[i, P - len(p):P] = 1
        mask[i, P:P + len(r)] = 1
    extra = [{"question": q, "index": i, "split": "train", "passages": [f"passage {i}"]}
             for i, q in enumerate(questions)]
    data = DataProto.from_dict(
        tensors={"prompts": prompts, "responses": resp, "attention_mask": mask,
                 "input_ids": torch.cat([prompts, resp], dim=1)},
        non_tensors={"data_source": np.array(["qa"] * n, dtype=object),
                     "reward_model": np.array([{"ground_truth": t} for t in truths], dtype=object),
                     "extra_info": np.array(extra, dtype=object),
                     "__num_turns__": np.array([2] * n, dtype=object),
                     "tool_extra_fields": np.array([{"turn_scores": [0.5], "tool_rewards": [1.0]}] * n,
                                                   dtype=object)})
    decoded = [tok.decode(ids, skip_special_tokens=True) for ids in resp_ids]
    return data, decoded


def _rm_scores(config, data):
    """verl's RewardLoopManager.compute_rm_score with its one worker run in this process (no Ray)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = RewardLoopWorker(config)  # get_event_loop() inside: the loop above

        class Handle:  # what ray.remote(RewardLoopWorker) would hand out
            class compute_score_batch:  # noqa: N801
                @staticmethod
                def remote(chunk):
                    return worker.compute_score_batch(chunk)

        manager = object.__new__(RewardLoopManager)
        manager.config, manager.reward_model_manager = config, None
        manager.reward_loop_workers = [Handle()]
        manager.reward_manager_cls = get_reward_manager_cls(config.reward.reward_manager.name)
        sys.modules["ray"].get = lambda refs: [loop.run_until_complete(r) for r in refs]
        return manager.compute_rm_score(data)
    finally:  # a failed batch leaves verl's other per-response tasks pending: end them quietly
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
        asyncio.set_event_loop(None)


@pytest.mark.parametrize("fn", ["compute_score", "compute_score_async"])
def test_verl_naive_manager_scores_each_response_as_alarm_does(tmp_path, reward_set, fn):
    data, decoded = _batch()
    expected = reward_set.sequence_rewards(QUESTIONS, decoded, reference=TRUTHS)[0]
    SEEN.clear()
    out = _rm_scores(_config(tmp_path, fn), data)
    scores = out.batch["rm_scores"]
    # verl puts the score on each response's last token
    last = data.batch["attention_mask"][:, data.batch["prompts"].shape[1]:].sum(1) - 1
    assert scores[torch.arange(len(decoded)), last].tolist() == pytest.approx(expected, rel=1e-5)
    assert scores.sum(1).tolist() == pytest.approx(expected, rel=1e-5)
    extras = out.non_tensor_batch
    assert {"score", "gate_open", "holistic_z", "aspect/chars", "fallback"} <= set(out.meta_info["reward_extra_keys"])
    assert extras["gate_open"].tolist().count(1.0) >= 1 and extras["fallback"].tolist() == [0.0] * len(decoded)
    # the row's own extra_info keys are columns; what verl adds (num_turns, rollout_reward_scores, the tool
    # fields) and its bookkeeping (index, split) are not
    for cols in SEEN:
        assert set(cols) == {"reference", "passages"}, cols
    if fn == "compute_score_async":  # one worker's responses arrive together: one scoring pass
        assert len(SEEN) == 1
    else:
        assert len(SEEN) == len(decoded)


def test_verl_gdpo_manager_experiment_name_is_no_column_and_warns(tmp_path, reward_set, caplog):
    alarm_verl._WARNED.discard("gdpo")
    data, decoded = _batch()
    expected = reward_set.sequence_rewards(QUESTIONS, decoded, reference=TRUTHS)[0]
    SEEN.clear()
    with caplog.at_level(logging.WARNING, logger="alarm.verl"):
        out = _rm_scores(_config(tmp_path, "compute_score_async", manager="gdpo"), data)
    assert out.batch["rm_scores"].sum(1).tolist() == pytest.approx(expected, rel=1e-5)
    assert all(set(cols) == {"reference", "passages"} for cols in SEEN)
    assert "gdpo_reward_keys" in caplog.text


def test_verl_an_unscorable_response_is_an_error_naming_it_or_a_logged_fallback(tmp_path, reward_set, caplog):
    responses = [*RESPONSES[:3], "FAIL here", *RESPONSES[4:]]
    data, decoded = _batch(responses)
    with pytest.raises(AlarmError, match="FAIL"):
        _rm_scores(_config(tmp_path, "compute_score_async"), data)
    alarm_verl._GROUPS.clear()
    with caplog.at_level(logging.WARNING, logger="alarm.verl"):
        out = _rm_scores(_config(tmp_path, "compute_score_async", fallback=-3.0), data)
    scores = out.batch["rm_scores"].sum(1).tolist()
    ok = [i for i in range(len(decoded)) if i != 3]
    expected = reward_set.sequence_rewards([QUESTIONS[i] for i in ok], [decoded[i] for i in ok],
                                           reference=[TRUTHS[i] for i in ok])[0]
    assert scores[3] == -3.0 and [scores[i] for i in ok] == pytest.approx(expected, rel=1e-5)
    assert out.non_tensor_batch["fallback"].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert "fallback -3.0" in caplog.text
    assert all(np.isfinite(out.non_tensor_batch[k].astype(float)).all() for k in out.meta_info["reward_extra_keys"])


def test_verl_has_no_batch_manager_any_more():
    with pytest.raises(ValueError, match="Unknown reward manager: batch"):
        get_reward_manager_cls("batch")
