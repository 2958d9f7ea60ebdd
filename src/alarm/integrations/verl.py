"""ALaRM's combined reward as verl's custom reward function (``compute_score``), for verl 0.9.

verl 0.9 resolves ``reward.reward_manager.name`` in its reward-loop registry (``naive``, ``dapo``, ``gdpo``,
``rate_limited``, ``remote``); there is no ``batch`` manager any more. The ``naive`` manager (the default)
calls the custom function once per response::

    reward.reward_manager.name=naive
    reward.custom_reward_function.path=$(python -c 'import alarm.integrations.verl as m; print(m.__file__)')
    reward.custom_reward_function.name=compute_score_async          # or compute_score (one pass per response)
    +reward.custom_reward_function.reward_kwargs.url=http://127.0.0.1:5000   # alarm serve-reward
    # or: +reward.custom_reward_function.reward_kwargs.run=/abs/path/runs/qa  (the models in every worker)

Batching: verl 0.9 offers no batch call for a custom function, but its ``naive`` manager awaits a
coroutine function, and each reward-loop worker scores all the responses of its share concurrently.
``compute_score_async`` collects the calls that arrive together in one worker and scores them in one pass
(one HTTP request with ``url``); ``compute_score`` scores each response on its own. With ``url`` the
reward models live once, in ``alarm serve-reward`` (which also merges the requests of all workers);
with ``run`` every reward-loop worker loads its own copy.

verl passes the response, ``ground_truth`` and the row's ``extra_info`` but not the prompt: put the question
the rewards should read in ``extra_info["question"]`` (and any other columns the recipe's rewards need,
e.g. ``passages``) when preparing the parquet files; ``ground_truth`` fills the column ``label_column``
(``reference``). The keys verl adds to ``extra_info`` itself (``num_turns``, ``rollout_reward_scores``,
``experiment_name``, the agent loop's tool fields, ...) never become columns; ``columns=[a, b]`` in
reward_kwargs names the columns to pass instead. The return is a dict: ``score`` (the hierarchical return
R) plus ``gate_open``, ``holistic_z``, ``aspect/<name>`` …, which verl logs beside it. Under
``algorithm.adv_estimator=gdpo`` list only ``score`` in ``algorithm.gdpo_reward_keys``: GDPO normalises each
listed key within the group on its own, so listing the parts (``holistic_part``, ``aspect/<name>``) breaks
the hierarchy (a warning says so once when verl's ``gdpo`` manager calls). No ``None`` or NaN is returned:
a response that cannot be scored raises an error naming it, or gets ``fallback=X`` from reward_kwargs
(logged). Instead of reward_kwargs, the environment variables ``ALARM_REWARD_RUN``,
``ALARM_REWARD_RECIPE``, ``ALARM_REWARD_STATE`` and ``ALARM_REWARD_URL`` can say the same (Ray workers
inherit them through ``runtime_env``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

from alarm.errors import AlarmError

log = logging.getLogger("alarm.verl")

_SETS: dict[tuple, Any] = {}
_LOCK = threading.Lock()
_SKIP = ("question", "prompt")  # extra_info keys that are the prompt, not columns
# What verl 0.9 itself writes into extra_info: the reward managers (num_turns, rollout_reward_scores,
# experiment_name under gdpo) and the agent loop's extra fields (tool_extra_fields merged in by naive);
# index/split are its data-preparation examples' bookkeeping.
VERL_KEYS = frozenset({
    "num_turns", "rollout_reward_scores", "experiment_name", "tool_extra_fields", "tools_kwargs",
    "interaction_kwargs", "need_tools_kwargs", "raw_prompt", "max_global_steps", "min_global_steps",
    "num_cached_tokens", "kv_transfer_params", "spec_num_draft_tokens", "spec_num_accepted_tokens",
    "teacher_ids", "teacher_logprobs", "turn_scores", "tool_rewards", "reward_extra_info", "index", "split",
    "__num_turns__", "reward_scores"})
_WARNED: set[str] = set()


def _reward_set(run, recipe, state):
    """One fitted RewardSet per (run, recipe, state) per worker process: reward models load once."""
    from alarm.integrations.run_rewards import fitted_reward_set

    key = (run, recipe, state)
    with _LOCK:
        if key not in _SETS:
            _SETS[key] = fitted_reward_set(config=recipe, state=state, run=run)
        return _SETS[key]


def _warn_once(key: str, msg: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(msg)


def _rows(solution_strs, ground_truths, extra_infos, label_column, columns=None):
    prompts, rows = [], []
    for gt, info in zip(ground_truths, extra_infos):
        info = dict(info or {})
        if "experiment_name" in info:
            _warn_once("gdpo", "alarm verl reward: verl's gdpo manager is calling; under adv_estimator=gdpo list "
                               "only 'score' in algorithm.gdpo_reward_keys (each listed key is normalised within "
                               "the group on its own, so the parts of alarm's return would break its hierarchy)")
        prompts.append(str(info.get("question", info.get("prompt", "")) or ""))
        if columns is not None:
            cols = {k: info.get(k) for k in columns}
        else:
            cols = {k: v for k, v in info.items() if k not in _SKIP and k not in VERL_KEYS}
        if gt is not None:
            cols[label_column] = gt
        rows.append(cols)
    return prompts, [str(s) for s in solution_strs], rows


def _num(x) -> float:
    """A per-response extra for verl (it stacks them into arrays): None and NaN become 0."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0


def _dicts(returns, per_sample: dict, flags: Sequence[bool], keys: Sequence[str]) -> list[dict]:
    """verl's per-response dicts: ``score`` and the same extras in every one (verl stacks them by key)."""
    out = []
    for i, r in enumerate(returns):
        d = {"score": float(r)}
        for k in keys:
            v = per_sample.get(k)
            d[k] = _num(v[i]) if v is not None else 0.0
        d["fallback"] = float(bool(flags[i]))
        out.append(d)
    return out


def _extra_keys(aspects) -> list[str]:
    return ["gate_open", "holistic_part", "aspect_part", "holistic_z", *(f"aspect/{k}" for k in aspects)]


def compute_score_batch(data_sources: Sequence, solution_strs: Sequence[str], ground_truths: Sequence,
                        extra_infos: Sequence[dict | None] | None = None, *, run: str | None = None,
                        recipe: str | None = None, state: str | None = None, url: str | None = None,
                        label_column: str = "reference", columns: Sequence[str] | None = None,
                        fallback: float | None = None, timeout: float = 300.0, retries: int = 3,
                        **_ignored) -> list[dict]:
    """A list of responses in one scoring pass (what :func:`compute_score_async` calls for each group)."""
    run = run or os.environ.get("ALARM_REWARD_RUN")
    recipe = recipe or os.environ.get("ALARM_REWARD_RECIPE")
    state = state or os.environ.get("ALARM_REWARD_STATE")
    url = url or os.environ.get("ALARM_REWARD_URL")
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    columns = list(columns) if columns is not None else None
    prompts, completions, rows = _rows(solution_strs, ground_truths, extra_infos, label_column, columns)
    if url:
        return _remote(url, prompts, completions, rows, timeout, retries)
    if not (run or recipe):
        raise AlarmError("alarm's verl reward needs run=RUN_DIR, recipe=RECIPE (+ state=), or url= of "
                         "`alarm serve-reward` in custom_reward_function.reward_kwargs (or ALARM_REWARD_RUN / "
                         "ALARM_REWARD_URL)")
    from alarm.integrations.run_rewards import score_for_engine

    reward_set = _reward_set(run, recipe, state)
    keys = sorted({k for c in rows for k in c})
    result, flags = score_for_engine(reward_set, prompts, completions, {k: [c.get(k) for c in rows] for k in keys},
                                     fallback=fallback, who="alarm verl reward", log=log.warning)
    return _dicts(result.returns, result.per_sample(), flags, _extra_keys(reward_set.aspects))


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs) -> dict:
    """One response (verl's ``naive`` manager calls it once per response)."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]


class _Group:
    """The calls that arrive together in one event loop with the same settings, scored in one pass."""

    def __init__(self, kwargs: dict, wait: float, max_batch: int):
        self.kwargs, self.wait, self.max_batch = kwargs, wait, max_batch
        self.pending: list[tuple[tuple, asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    async def submit(self, row: tuple) -> dict:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending.append((row, fut))
        if self.task is None:
            self.task = loop.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        await asyncio.sleep(self.wait)  # let the other responses of this worker's share arrive
        while self.pending:
            batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
            await self._score(batch)
        self.task = None

    async def _score(self, batch) -> None:
        def run(rows):
            return compute_score_batch(*(list(col) for col in zip(*rows)), **self.kwargs)

        try:
            results = await asyncio.to_thread(run, [row for row, _ in batch])
        except Exception as e:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(e)
                return
            for one in batch:  # find the response at fault; the others keep their rewards
                await self._score([one])
            return
        for (_, fut), result in zip(batch, results):
            if not fut.done():
                fut.set_result(result)


_GROUPS: dict[tuple, _Group] = {}


async def compute_score_async(data_source: Any, solution_str: str, ground_truth: Any,
                              extra_info: dict | None = None, *, batch_wait_ms: float = 20.0,
                              max_batch: int = 256, **kwargs) -> dict:
    """One response, scored together with the others that arrive in the same reward-loop worker within
    ``batch_wait_ms`` (verl's ``naive`` manager awaits it; the worker runs its responses concurrently)."""
    loop = asyncio.get_running_loop()
    key = (id(loop), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    group = _GROUPS.get(key)
    if group is None:
        group = _GROUPS[key] = _Group(dict(kwargs), float(batch_wait_ms) / 1000.0, int(max_batch))
    return await group.submit((data_source, solution_str, ground_truth, extra_info))


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
    bad = [i for i, r in enumerate(rewards) if not isinstance(r, (int, float)) or not math.isfinite(r)]
    if bad:
        raise AlarmError(f"alarm verl reward: {endpoint} answered {rewards[bad[0]]!r} for response {bad[0]}; "
                         "a reward must be a finite number")
    logs = payload.get("extra_logs") or {}
    keys = [k for k in logs if k not in ("return", "prompt_truncated", "response_clipped", "fallback")]
    return _dicts(rewards, logs, [bool(x) for x in logs.get("fallback", [0.0] * len(rewards))], keys)


if __name__ != "alarm.integrations.verl":
    # verl loads this file by its path, as a module of another name: use the package's functions, so that
    # every way of loading shares one cache of reward models and one set of batching groups per process.
    from alarm.integrations import verl as _package

    compute_score, compute_score_async = _package.compute_score, _package.compute_score_async
    compute_score_batch = _package.compute_score_batch


__all__ = ["VERL_KEYS", "compute_score", "compute_score_async", "compute_score_batch"]
