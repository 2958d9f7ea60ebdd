"""ALaRM's combined reward as verl's custom reward function (``compute_score``).

verl 0.9 (older versions: ``custom_reward_function.*`` at the top level and ``reward_model.reward_manager=batch``)::

    reward.custom_reward_function.path=$(python -c 'import alarm.integrations.verl as m; print(m.__file__)')
    reward.custom_reward_function.name=compute_score_batch reward.reward_manager.name=batch
    +reward.custom_reward_function.reward_kwargs.run=/abs/path/runs/qa   # recipe, normalisers, ε, kept aspects
    # or: +reward.custom_reward_function.reward_kwargs.url=http://127.0.0.1:5000   (alarm serve-reward: one
    #     copy of the reward models for every verl reward worker; nothing else is loaded in the workers)

``compute_score`` is the per-response form the default (``naive``) reward manager calls. verl passes the
response, ``ground_truth`` and the row's ``extra_info`` but not the prompt: put the question the rewards
should read in ``extra_info["question"]`` (and any other columns the recipe's rewards need, e.g.
``passages``) when preparing the parquet files; ``ground_truth`` fills the column ``label_column``
(``reference``). The return is a dict: ``score`` (the hierarchical return R) plus ``gate_open``,
``holistic_z``, ``aspect/<name>`` …, which verl logs beside it. Instead of reward_kwargs, the environment
variables ``ALARM_REWARD_RUN``, ``ALARM_REWARD_RECIPE``, ``ALARM_REWARD_STATE`` and ``ALARM_REWARD_URL``
can say the same (Ray workers inherit them through ``runtime_env``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from alarm.errors import AlarmError

_SETS: dict[tuple, Any] = {}
_LOCK = threading.Lock()
_SKIP = ("question", "prompt")  # extra_info keys that are the prompt, not columns


def _reward_set(run, recipe, state):
    """One fitted RewardSet per (run, recipe, state) per worker process: reward models load once."""
    from alarm.integrations.run_rewards import fitted_reward_set

    key = (run, recipe, state)
    with _LOCK:
        if key not in _SETS:
            _SETS[key] = fitted_reward_set(config=recipe, state=state, run=run)
        return _SETS[key]


def _rows(solution_strs, ground_truths, extra_infos, label_column):
    prompts, columns = [], []
    for gt, info in zip(ground_truths, extra_infos):
        info = dict(info or {})
        prompts.append(str(info.get("question", info.get("prompt", "")) or ""))
        cols = {k: v for k, v in info.items() if k not in _SKIP}
        if gt is not None:
            cols[label_column] = gt
        columns.append(cols)
    return prompts, [str(s) for s in solution_strs], columns


def _dicts(returns, per_sample: dict) -> list[dict]:
    out = []
    for i, r in enumerate(returns):
        d = {"score": float(r)}
        for k, v in per_sample.items():
            if k != "return":
                x = v[i]
                d[k] = 0.0 if x is None else float(x)  # every dict has the same keys: verl stacks them
        out.append(d)
    return out


def compute_score_batch(data_sources: Sequence, solution_strs: Sequence[str], ground_truths: Sequence,
                        extra_infos: Sequence[dict | None] | None = None, *, run: str | None = None,
                        recipe: str | None = None, state: str | None = None, url: str | None = None,
                        label_column: str = "reference", timeout: float = 300.0, retries: int = 3,
                        **_ignored) -> list[dict]:
    """The batch form (``reward_model.reward_manager=batch``): one scoring pass for the whole batch."""
    run = run or os.environ.get("ALARM_REWARD_RUN")
    recipe = recipe or os.environ.get("ALARM_REWARD_RECIPE")
    state = state or os.environ.get("ALARM_REWARD_STATE")
    url = url or os.environ.get("ALARM_REWARD_URL")
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    prompts, completions, columns = _rows(solution_strs, ground_truths, extra_infos, label_column)
    if url:
        return _remote(url, prompts, completions, columns, timeout, retries)
    if not (run or recipe):
        raise AlarmError("alarm's verl reward needs run=RUN_DIR, recipe=RECIPE (+ state=), or url= of "
                         "`alarm serve-reward` in custom_reward_function.reward_kwargs (or ALARM_REWARD_RUN / "
                         "ALARM_REWARD_URL)")
    keys = sorted({k for c in columns for k in c})
    result = _reward_set(run, recipe, state).score_sequences(prompts, completions,
                                                             **{k: [c.get(k) for c in columns] for k in keys})
    return _dicts(result.returns, result.per_sample())


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs) -> dict:
    """The per-response form (verl's default ``naive`` reward manager)."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]


_SESSIONS: dict[str, Any] = {}


def _jsonable(x):
    """verl's non-tensor batch holds numpy arrays and scalars; JSON wants lists and floats."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):  # numpy arrays and numpy scalars
        return _jsonable(x.tolist())
    return x


def _remote(url: str, prompts, completions, columns, timeout: float, retries: int) -> list[dict]:
    """Ask ``alarm serve-reward`` (the reward models live there, not in every verl worker)."""
    import requests

    from alarm.rewards.remote import post_json

    endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/get_reward") else "/get_reward")
    session = _SESSIONS.setdefault(endpoint, requests.Session())
    labels = [_jsonable({**c, "question": p}) for p, c in zip(prompts, columns)]
    payload = post_json(session, endpoint, {"responses": completions, "prompts": prompts, "labels": labels},
                        timeout, retries, 1.0, who="alarm verl reward")
    rewards = payload.get("rewards") if isinstance(payload, dict) else None
    if not isinstance(rewards, list) or len(rewards) != len(completions):
        raise AlarmError(f"alarm verl reward: {endpoint} did not answer with {len(completions)} rewards")
    return _dicts(rewards, payload.get("extra_logs") or {})


__all__ = ["compute_score", "compute_score_batch"]
