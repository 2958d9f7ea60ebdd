"""PPO samples exactly the distribution its log-probs describe: settings in the policy's generation_config that
reshape sampling (repetition_penalty, no_repeat_ngram_size, sequence_bias, bad_words_ids, min_p, …) are left
out of training sampling, with a line saying which, and put back afterwards (evaluation still uses them)."""

from __future__ import annotations

import pytest
import tiny
import torch

RESHAPING = {"repetition_penalty": 5.0, "no_repeat_ngram_size": 1, "min_p": 0.5, "min_new_tokens": 8}


def _trainer(tmp_path, model, **cfg):
    from test_ppo import holistic_only_set, trainer

    return trainer(tmp_path, model, holistic_only_set(), **{"rollout_batch_size": 4, "steps": 1,
                                                             "max_new_tokens": 8, **cfg})


def _reshaped(tok):
    model = tiny.causal_lm()
    for k, v in RESHAPING.items():
        setattr(model.generation_config, k, v)
    model.generation_config.sequence_bias = {(tok.eos_token_id,): -100.0}
    model.generation_config.bad_words_ids = [[tok.eos_token_id]]
    return model


def test_reshaping_settings_are_found_and_defaults_are_not():
    from alarm.trainers.ppo import reshaping_settings

    tok = tiny.tokenizer()
    assert reshaping_settings(tiny.causal_lm()) == {}
    model = tiny.causal_lm()
    model.generation_config.repetition_penalty = 1.0  # the default: no reshaping
    assert reshaping_settings(model) == {}
    assert set(reshaping_settings(_reshaped(tok))) == {*RESHAPING, "sequence_bias", "bad_words_ids"}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_training_samples_what_its_log_probs_describe_and_says_which_settings_it_left_out(tmp_path, temperature):
    """With the reshaping settings in place the samples are those of the plain tempered distribution: the same
    seed gives the same tokens as a policy without them, and the sampling pass's log-probs equal the update's."""
    tok = tiny.tokenizer()
    with pytest.warns(UserWarning) as said:
        tr = _trainer(tmp_path / "a", _reshaped(tok), temperature=temperature)
    plain = _trainer(tmp_path / "b", tiny.causal_lm(), temperature=temperature)
    records = tr.prompt_batch(0)
    batch = tr.encode_prompts(records)
    torch.manual_seed(3)
    responses, outputs = tr.generate(batch, with_policy_outputs=True)
    torch.manual_seed(3)
    assert torch.equal(responses, plain.generate(plain.encode_prompts(records)))
    assert tr.unwrapped.model.generation_config.repetition_penalty == 5.0  # put back after sampling
    exp, _ = tr.make_experience(records, batch, responses, outputs)
    tr.policy.eval()
    with torch.no_grad():
        logits, _ = tr.policy(exp)
    sampled = torch.log_softmax(logits.float() / temperature, -1).gather(-1, exp.responses[..., None])[..., 0]
    torch.testing.assert_close(exp.old_logprobs, sampled * exp.mask, atol=1e-5, rtol=0)
    line = next(str(w.message) for w in said if "generation_config" in str(w.message))
    assert "repetition_penalty=5.0" in line and "no_repeat_ngram_size=1" in line and "bad_words_ids" in line
