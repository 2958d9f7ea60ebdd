"""alarm.data.prompts: every command builds records and reward inputs the same way (issue 15).

Before, `alarm score` handed rewards the chat-formatted policy input where training handed them the question,
and VCB held out every fifth QA-Feedback question where PPO split by question with a seed.
"""

from __future__ import annotations

import json

import tiny

from alarm.combine import CombineConfig, RewardSet
from alarm.config import DataSpec, load_recipe
from alarm.data.prompts import prompt_records, reward_inputs
from alarm.evaluation.scoring import generation_rows, score_records
from alarm.trainers.ppo import PPOConfig, PPOTrainer


class RecordingReward:
    """A holistic reward that remembers the prompts and columns it was given."""

    def __init__(self):
        self.seen: list[tuple[list[str], dict]] = []

    def __call__(self, prompts, completions, **columns):
        self.seen.append((list(prompts), {k: list(v) for k, v in columns.items()}))
        return [float(len(c)) for c in completions]


def test_score_and_training_hand_rewards_the_same_inputs(tmp_path):
    tok = tiny.tokenizer()
    records = prompt_records(DataSpec(), tok, "test")[:3]  # the packaged quickstart set
    assert records[0]["prompt"] != records[0]["question"]  # the policy input carries passages and a template

    scoring = RecordingReward()
    rows = generation_rows(records, [["An answer."]] * len(records))
    score_records(RewardSet(CombineConfig(mode="holistic_only"), holistic=scoring, normalize=()), rows)

    training = RecordingReward()
    rs = RewardSet(CombineConfig(mode="holistic_only"), holistic=training, normalize=())
    rs.epsilon = 0.0
    trainer = PPOTrainer(PPOConfig(max_new_tokens=4, rollout_batch_size=3, mini_batch_size=3), tiny.causal_lm(),
                         tok, rs, records, tmp_path)
    batch = trainer.encode_prompts(records)
    trainer.make_experience(records, batch, trainer.generate(batch))

    (score_prompts, score_cols), (train_prompts, train_cols) = scoring.seen[0], training.seen[0]
    assert score_prompts == train_prompts == [r["question"] for r in records]
    assert score_cols == train_cols and {"passages", "reference", "question"} <= set(train_cols)


def test_reward_inputs_leave_out_bookkeeping_and_stored_scores():
    prompts, columns = reward_inputs([{"id": "a", "prompt_id": "a", "prompt": "<chat>Q?", "question": "Q?",
                                       "split": "train", "candidate": "x", "reward": 1.0, "raw_holistic": 0.3,
                                       "passages": ["P"]}])
    assert prompts == ["Q?"] and columns == {"passages": [["P"]], "question": ["Q?"]}
    assert reward_inputs([{"prompt": "plain"}])[0] == ["plain"]  # no question: the prompt itself


def _qa_feedback_file(tmp_path, n=20):
    items = [{"question": f"Question number {i}?", "answers": [f"Answer {i}."],
              "passages": [{"title": f"Page {i}", "text": f"Passage {i} one."},
                           {"title": f"Other {i}", "text": f"Passage {i} two."}]} for i in range(n)]
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(items))
    return path


def test_ppo_and_vcb_hold_out_the_same_questions(tmp_path):
    from alarm.recipes.vcb import load_vcb_recipe, vcb_records

    path = _qa_feedback_file(tmp_path)
    tok = tiny.tokenizer()
    ppo = load_recipe(None, ["data.task=qa_feedback", f"data.path={path}"])
    vcb = load_vcb_recipe(None, ["data.task=qa_feedback", f"data.path={path}", "sample.eval_prompts=null"])
    ppo_test = {r["id"] for r in prompt_records(ppo.data, tok, "test")}
    vcb_rows = vcb_records(vcb, tok, seq2seq=False)
    assert {r["prompt_id"] for r in vcb_rows if r["split"] == "test"} == ppo_test
    assert len(ppo_test) == 4  # 20 % of 20 questions, split by question with the seed
    ppo_train = {r["id"] for r in prompt_records(ppo.data, tok, "train")}
    assert {r["prompt_id"] for r in vcb_rows if r["split"] == "train"} == ppo_train
    assert not ppo_train & ppo_test


def test_the_run_seed_does_not_move_the_qa_feedback_split(tmp_path):
    """Seeds 1, 2, 3 of a comparison must hold out the questions the reward models (split seed 42) held out;
    before, the split followed the run's seed and a seed-7 run trained on the reward models' held-out questions."""
    from alarm.data.qa_feedback import split_questions

    path = _qa_feedback_file(tmp_path, n=40)
    tok = tiny.tokenizer()
    _, rm_held_out = split_questions([f"Question number {i}?" for i in range(40)], 0.2, 42)
    from alarm.recipes.vcb import load_vcb_recipe, vcb_records

    for seed in (1, 7):
        run = load_recipe(None, ["data.task=qa_feedback", f"data.path={path}", f"seed={seed}"])
        assert {r["question"] for r in prompt_records(run.data, tok, "test")} == rm_held_out
        vcb = load_vcb_recipe(None, ["data.task=qa_feedback", f"data.path={path}", "sample.eval_prompts=null",
                                     f"seed={seed}"])
        assert {r["question"] for r in vcb_records(vcb, tok, seq2seq=False) if r["split"] == "test"} == rm_held_out
    moved = load_recipe(None, ["data.task=qa_feedback", f"data.path={path}", "data.split_seed=7"])
    assert {r["question"] for r in prompt_records(moved.data, tok, "test")} != rm_held_out


def test_a_qa_feedback_file_under_the_qa_task_says_which_task_to_set(tmp_path):
    import pytest

    from alarm.errors import AlarmError

    with pytest.raises(AlarmError, match="data.task: qa_feedback"):
        prompt_records(DataSpec(path=str(_qa_feedback_file(tmp_path))), tiny.tokenizer(), "train")
