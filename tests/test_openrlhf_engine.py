"""``alarm serve-reward`` against OpenRLHF 0.11.2's own remote-reward client (the wheel, installed --no-deps).

The client is OpenRLHF's ``SingleTurnAgentExecutor``: it tokenizes the prompt, cuts an over-long prompt
from the left, decodes prompt + response without skipping special tokens, posts ``{"query", "prompts",
"labels"}`` with aiohttp (5 tries, then ``reward=None``) and reads ``rewards``/``scores``/``extra_logs``.
Only ``pylatexenc`` is stubbed (``openrlhf.utils`` imports its math grader at package import; it is not
installed); vLLM is replaced by a fake engine that returns fixed token ids, which is what the executor
reads from it. The policy's tokenizer is a tiny byte-level BPE with ``<|im_end|>`` as its end-of-turn token.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest
import tiny
from test_serve_reward import reward_set

from alarm.integrations.serve import RewardServer

if importlib.util.find_spec("openrlhf") is None or importlib.util.find_spec("aiohttp") is None:
    pytest.skip("make install puts openrlhf 0.11.2 (--no-deps) and aiohttp into .venv", allow_module_level=True)
if importlib.util.find_spec("pylatexenc") is None:
    stub = types.ModuleType("pylatexenc")
    stub.latex2text = types.SimpleNamespace(LatexNodes2Text=object)
    sys.modules["pylatexenc"] = stub
from openrlhf.utils.agent import SingleTurnAgentExecutor  # noqa: E402


def policy_tokenizer():
    tok = copy.deepcopy(tiny.tokenizer())
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    return tok


class FakeEngine:
    """vLLM's place in the executor: answers with the token ids of a fixed response, then <|im_end|>."""

    def __init__(self, tok, response: str):
        self.ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
        self.prompts_seen: list[list[int]] = []

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        self.prompts_seen.append(list(prompt_token_ids))
        out = SimpleNamespace(token_ids=list(self.ids), finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[out])


def run_openrlhf(url: str, prompt: str, label, response: str, max_length: int, max_tokens: int):
    tok = policy_tokenizer()
    engine = FakeEngine(tok, response)
    executor = SingleTurnAgentExecutor(remote_rm_url=url)
    params = SimpleNamespace(max_tokens=max_tokens, logprobs=None)
    out = asyncio.run(executor.execute(prompt, label, params, max_length, tok, engine))
    return out, engine, tok


PROMPT = "<user>What is the capital of France?<assistant>"
RESPONSE = "The capital of France is Paris."
LABEL = "paris capital france"


@pytest.fixture()
def server():
    with RewardServer(reward_set(), port=0, max_wait_ms=5) as srv:
        yield srv


def test_openrlhf_client_scores_a_response_as_alarm_score_does_without_its_end_of_turn_token(server):
    out, engine, tok = run_openrlhf(server.url + "/get_reward", PROMPT, LABEL, RESPONSE, max_length=512,
                                    max_tokens=64)
    # OpenRLHF decoded the query with the end-of-turn token in it
    assert tok.decode(out["observation_tokens"], skip_special_tokens=False).endswith("<|im_end|>")
    expected = server.reward_set.sequence_rewards([PROMPT], [RESPONSE], reference=[LABEL])[0]
    assert out["reward"] is not None and out["reward"] == pytest.approx(expected)
    assert out["scores"] == pytest.approx(expected)
    assert out["extra_logs"]["prompt_truncated"] == [0.0] and "gate_open" in out["extra_logs"]


def test_openrlhf_client_with_a_left_truncated_prompt_still_gets_its_reward(server):
    long_prompt = "<user>" + "Please read this background carefully. " * 40 + "What is the capital of France?<assistant>"
    out, engine, tok = run_openrlhf(server.url + "/get_reward", long_prompt, LABEL, RESPONSE, max_length=96,
                                    max_tokens=32)
    full = tok(long_prompt, add_special_tokens=False)["input_ids"]
    assert len(engine.prompts_seen[0]) < len(full)  # OpenRLHF cut the prompt from the left
    expected = server.reward_set.sequence_rewards([long_prompt], [RESPONSE], reference=[LABEL])[0]
    assert out["reward"] is not None, "OpenRLHF kept reward=None: the server refused the truncated query"
    assert out["reward"] == pytest.approx(expected)
    assert out["extra_logs"]["prompt_truncated"] == [1.0]
    assert server.stats["truncated_prompts"] == 1 and server.stats["bad_requests"] == 0
