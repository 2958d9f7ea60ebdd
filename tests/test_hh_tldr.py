"""The VCB paper's tasks (issue 19, item 2): Anthropic HH dialogues and TL;DR posts — loaders for a local file
and for a hub data set (a ``datasets.Dataset`` built here stands in for it), the prompts, the errors a user can
cause, the packaged offline stand-ins, and `alarm vcb sample` + `train` on each stand-in with a tiny model."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import tomllib
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

import pytest
import tiny

from alarm.config import DataSpec
from alarm.data import hh, tldr
from alarm.data.prompts import prompt_records
from alarm.errors import AlarmError
from alarm.recipes.vcb import load_vcb_recipe

RECIPES = Path(__file__).parents[1] / "src" / "alarm" / "recipes"
DATA = Path(__file__).parents[1] / "src" / "alarm" / "data"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def chat_tokenizer(tmp_path):
    """The tiny tokenizer with a chat template (a copy: the cached one stays template-free)."""
    from transformers import AutoTokenizer

    d = tmp_path / "tok"
    tiny.tokenizer().save_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = TEMPLATE
    return tok


def hh_record(turns, chosen, rejected="I don't know.", **extra):
    body = "".join(f"\n\n{role}: {text}" for role, text in turns)
    return {"chosen": f"{body}\n\nAssistant: {chosen}", "rejected": f"{body}\n\nAssistant: {rejected}", **extra}


DIALOGUE = [("Human", "Hi!"), ("Assistant", "Hello, how can I help?"), ("Human", "What is 2 plus 2?")]


# ------------------------------------------------------------------------------------------ HH transcripts


def test_transcript_turns_merge_repeats_and_keep_paragraphs():
    text = ("\n\nHuman: First line.\n\nHuman: Same speaker again.\n\nAssistant: A reply.\n\nWith a second "
            "paragraph.\n\nHuman: Next?\n\nAssistant: Done.")
    assert hh.parse_transcript(text) == [
        ("Human", "First line.\n\nSame speaker again."), ("Assistant", "A reply.\n\nWith a second paragraph."),
        ("Human", "Next?"), ("Assistant", "Done.")]


@pytest.mark.parametrize("text, problem", [
    ("\n\nHuman: Hi?", "must end with an 'Assistant:' reply"),
    ("\n\nAssistant: Hello.", "must open with a 'Human:' turn"),
    ("just text", "text before the first 'Human:' turn"),
    ("", "no 'Human:' / 'Assistant:' turns"),
])
def test_malformed_transcripts_say_what_is_wrong(text, problem):
    assert problem in hh.parse_transcript(text)


def test_hh_file_records_the_dialogue_without_its_last_reply(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        hh_record(DIALOGUE, "2 plus 2 is 4.", "It is 5.", split="train", id="a"),
        {**hh_record(DIALOGUE, "Four."), "rejected": "\n\nHuman: Other?\n\nAssistant: No.", "split": "train"},
        hh_record([("Human", "Empty reply?")], "", split="train"),
        hh_record([("Human", "Held out?")], "Yes.", split="test"),
    ])
    with pytest.warns(UserWarning, match="1 of 3 HH dialogues in split 'train' skipped"):
        train = hh.load_split(str(path), "train")
    assert [d.id for d in train] == ["a", "hh-2"]  # a kept id; else the line number
    assert train[0].turns == tuple(DIALOGUE) and train[0].reference == "2 plus 2 is 4."
    assert train[0].rejected == "It is 5."
    assert train[1].rejected is None  # the rejected transcript answers another dialogue
    assert [d.reference for d in hh.load_split(str(path), "test")] == ["Yes."]


def test_a_file_without_splits_is_split_90_10_with_the_seed(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [hh_record([("Human", f"Question {i}?")], f"Answer {i}.")
                                                for i in range(40)])
    train, test = hh.load_split(str(path), "train"), hh.load_split(str(path), "test")
    assert (len(train), len(test)) == (36, 4)
    assert {d.id for d in train} | {d.id for d in test} == {f"hh-{i}" for i in range(1, 41)}
    assert {d.id for d in test} == {d.id for d in hh.load_split(str(path), "test")}  # same seed, same split
    assert {d.id for d in test} != {d.id for d in hh.load_split(str(path), "test", seed=7)}
    with pytest.raises(AlarmError, match="split 'validation' does not exist"):
        hh.load_split(str(path), "validation")


def test_one_file_per_split_and_gzip(tmp_path):
    (tmp_path / "test.jsonl.gz").write_bytes(gzip.compress(
        json.dumps(hh_record([("Human", "Zipped?")], "Yes.")).encode() + b"\n"))
    got = hh.load_split(str(tmp_path / "{split}.jsonl.gz"), "test")
    assert [(d.turns, d.reference) for d in got] == [((("Human", "Zipped?"),), "Yes.")]
    with pytest.raises(AlarmError, match=r"cannot read HH dialogues .*train\.jsonl\.gz"):
        hh.load_split(str(tmp_path / "{split}.jsonl.gz"), "train")


@pytest.mark.parametrize("lines, problem", [
    (['{"rejected": "\\n\\nHuman: a\\n\\nAssistant: b"}'], "line 1: missing field 'chosen'"),
    (['{"chosen": 3}'], "line 1: field 'chosen' must be a transcript string"),
    (['{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b"}', '{"chosen": "\\n\\nHuman: only a question"}'],
     "line 2: field 'chosen': the transcript must end with an 'Assistant:' reply"),
    (['["chosen", "rejected"]'], "line 1: each record must be a JSON object"),
    (['{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b"}', "not json"], "line 2: invalid JSON"),
    (['{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "split": "train"}',
      '{"chosen": "\\n\\nHuman: c\\n\\nAssistant: d"}'], "some records have a 'split' field and some do not"),
    (['{"id": 1, "chosen": "\\n\\nHuman: a\\n\\nAssistant: b"}',
      '{"id": "1", "chosen": "\\n\\nHuman: c\\n\\nAssistant: d"}'],
     "line 2: duplicate id '1'"),
    ([], "no records"),
])
def test_malformed_hh_files_are_one_line_errors(tmp_path, lines, problem):
    path = tmp_path / "hh.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AlarmError) as e:
        hh.load_split(str(path), "train")
    assert str(path) in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)


def test_missing_file_names_the_setting_to_fix(tmp_path):
    with pytest.raises(AlarmError, match=r"cannot read HH dialogues .*missing\.jsonl.*check data\.path"):
        hh.load_split(str(tmp_path / "missing.jsonl"), "train")


# ------------------------------------------------------------------------------------ hub data (stand-in)


@pytest.fixture
def fake_hub(monkeypatch):
    """``datasets.load_dataset`` answering from Datasets built here; records every call."""
    import datasets

    tables: dict[tuple[str, str], datasets.Dataset] = {}
    calls: list[dict] = []

    def load_dataset(name, data_dir=None, split=None, **kw):
        calls.append({"name": name, "data_dir": data_dir, "split": split})
        if (name, split) not in tables:
            raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)\nmore detail")
        return tables[(name, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tables, calls


def test_hh_from_the_hub_in_a_seeded_order(fake_hub):
    import datasets

    tables, calls = fake_hub
    rows = [hh_record([("Human", f"Question {i}?")], f"Answer {i}.", f"Wrong {i}.") for i in range(30)]
    tables[("Anthropic/hh-rlhf", "train")] = datasets.Dataset.from_list(rows)
    got = hh.load_split("Anthropic/hh-rlhf/helpful-base", "train", seed=3, limit=10)
    assert calls == [{"name": "Anthropic/hh-rlhf", "data_dir": "helpful-base", "split": "train"}]
    assert len(got) == 10
    for d in got:  # the id is the row's index in the hub split, whatever the order
        i = int(d.id.removeprefix("hh-train-"))
        assert d.turns == (("Human", f"Question {i}?"),)
        assert (d.reference, d.rejected) == (f"Answer {i}.", f"Wrong {i}.")
    order = [d.id for d in got]
    assert order != sorted(order, key=lambda x: int(x.rsplit("-", 1)[1]))  # shuffled (the hub is sorted by subset)
    assert [d.id for d in hh.load_split("Anthropic/hh-rlhf", "train", seed=3, limit=10)] == order


def test_a_local_clone_of_the_hub_repository_reads_through_datasets(tmp_path):
    clone = tmp_path / "hh-rlhf" / "helpful-base"
    clone.mkdir(parents=True)
    for split in ("train", "test"):
        (clone / f"{split}.jsonl.gz").write_bytes(gzip.compress("".join(
            json.dumps(hh_record([("Human", f"{split} {i}?")], f"Reply {i}.")) + "\n" for i in range(5)).encode()))
    got = hh.load_split(str(tmp_path / "hh-rlhf"), "test", limit=3)
    assert len(got) == 3 and all(d.turns[0][1].startswith("test ") for d in got)
    assert {d.id for d in got} <= {f"hh-test-{i}" for i in range(5)}


def test_no_network_is_a_one_line_error_with_the_offline_way_out(fake_hub):
    with pytest.raises(AlarmError) as e:
        hh.load_split("Anthropic/hh-rlhf", "train")
    msg = str(e.value)
    assert "\n" not in msg and "cannot load Anthropic/hh-rlhf (split 'train') through datasets" in msg
    assert "Couldn't reach" in msg and "vcb_hh_offline.yaml" in msg and "data.path=hh.jsonl" in msg
    with pytest.raises(AlarmError, match="cannot load trl-lib/tldr .*vcb_tldr_offline.yaml"):
        tldr.load_split("trl-lib/tldr", "test")


def test_a_malformed_hub_row_is_named(fake_hub):
    import datasets

    tables, _ = fake_hub
    tables[("owner/set", "test")] = datasets.Dataset.from_list([{"text": "a"}])
    with pytest.raises(AlarmError, match=r"owner/set \(test\) row 0: missing field 'chosen'"):
        hh.load_split("owner/set", "test")


# ----------------------------------------------------------------------------------------------- HH prompts


def test_hh_prompt_is_the_chat_template_over_the_turns(tmp_path):
    tok = chat_tokenizer(tmp_path)
    d = hh.Dialogue("x", tuple(DIALOGUE), "2 plus 2 is 4.", "5.")
    [r] = hh.prompt_records([d], tok)
    assert r["prompt"] == ("<|user|>Hi!\n<|assistant|>Hello, how can I help?\n<|user|>What is 2 plus 2?\n"
                           "<|assistant|>")
    assert r["question"] == "Human: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: What is 2 plus 2?\n\nAssistant:"
    assert (r["last_turn"], r["reference"], r["rejected"]) == ("What is 2 plus 2?", "2 plus 2 is 4.", "5.")
    [r] = hh.prompt_records([d], tok, system="Be brief.")
    assert r["prompt"].startswith("<|system|>Be brief.\n<|user|>Hi!")
    [plain] = hh.prompt_records([d], tiny.tokenizer())  # no template: HH's own transcript
    assert plain["prompt"] == plain["question"] and plain["prompt"].endswith("What is 2 plus 2?\n\nAssistant:")


def test_max_prompt_tokens_drops_the_earliest_exchanges(tmp_path):
    tok = chat_tokenizer(tmp_path)
    long_turns = (("Human", "word " * 40), ("Assistant", "reply " * 40), *DIALOGUE)
    d = hh.Dialogue("x", long_turns, "4.")
    full = hh.prompt_records([d], tok)[0]
    [cut] = hh.prompt_records([d], tok, max_prompt_tokens=60)
    assert len(tok(cut["prompt"], add_special_tokens=False)["input_ids"]) <= 60 < \
        len(tok(full["prompt"], add_special_tokens=False)["input_ids"])
    assert cut["prompt"].startswith("<|user|>") and cut["last_turn"] == "What is 2 plus 2?"
    assert "word" not in cut["prompt"] and "word" not in cut["question"]
    with pytest.warns(UserWarning, match="1 of 2 HH dialogues skipped"):
        kept = hh.prompt_records([d, hh.Dialogue("y", (("Human", "long " * 200),), "ok")], tok,
                                 max_prompt_tokens=100)
    assert [r["id"] for r in kept] == ["x"]


def test_data_section_builds_hh_records_and_caps_only_train(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [hh_record([("Human", f"Q{i}?")], f"A{i}.", split=s)
                                                for i, s in enumerate(["train"] * 5 + ["test"] * 3)])
    spec = DataSpec(task="hh", path=str(path), max_train_prompts=2)
    train = prompt_records(spec, tiny.tokenizer(), "train")
    test = prompt_records(spec, tiny.tokenizer(), "test")
    assert [r["reference"] for r in train] == ["A0.", "A1."] and len(test) == 3
    assert {"id", "prompt", "question", "last_turn", "reference", "rejected"} == set(train[0])


# ------------------------------------------------------------------------------------------------------ TL;DR

TRL_PROMPT = "SUBREDDIT: r/dogs\n\nTITLE: My dog barks\n\nPOST: He barks all night.\n\nIt is loud.\n\nTL;DR:"


def test_tldr_reads_trl_rows_and_post_summary_records(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"prompt": TRL_PROMPT, "completion": " Dog barks at night.", "split": "train"},
        {"post": "Long post.", "summary": "Short.", "subreddit": "relationships", "title": "T", "split": "train"},
        {"prompt": "Just a post without the layout.\n\nTL;DR:", "completion": "A post.", "split": "train"},
    ])
    a, b, c = tldr.load_split(str(path), "train")
    assert (a.subreddit, a.title, a.post, a.reference) == ("r/dogs", "My dog barks",
                                                          "He barks all night.\n\nIt is loud.", "Dog barks at night.")
    assert (b.subreddit, b.title, b.post, b.reference) == ("r/relationships", "T", "Long post.", "Short.")
    assert (c.subreddit, c.title, c.post) == (None, None, "Just a post without the layout.")


@pytest.mark.parametrize("record, problem", [
    ({"prompt": TRL_PROMPT}, "field 'completion' must be a non-empty string"),
    ({"post": "P", "summary": ""}, "field 'summary' must be a non-empty string"),
    ({"post": "P", "summary": "S", "title": 3}, "field 'title' must be a non-empty string"),
    ({"text": "P"}, "no post to summarize"),
    ({"prompt": "TL;DR:", "completion": "x"}, "field 'prompt' holds no post before 'TL;DR:'"),
])
def test_malformed_tldr_records_are_one_line_errors(tmp_path, record, problem):
    path = write_jsonl(tmp_path / "t.jsonl", [{**record, "split": "train"}])
    with pytest.raises(AlarmError) as e:
        tldr.load_split(str(path), "train")
    assert f"{path} line 1: {problem}" in str(e.value) and "\n" not in str(e.value)


def test_tldr_from_the_hub_and_its_prompts(fake_hub, tmp_path):
    import datasets

    tables, calls = fake_hub
    tables[("trl-lib/tldr", "validation")] = datasets.Dataset.from_dict(
        {"prompt": [TRL_PROMPT] * 3, "completion": [" One.", " Two.", " Three."]})
    posts = tldr.load_split("trl-lib/tldr", "validation", seed=1)
    assert calls[-1] == {"name": "trl-lib/tldr", "data_dir": None, "split": "validation"}
    assert sorted(p.reference for p in posts) == ["One.", "Three.", "Two."]
    tok = chat_tokenizer(tmp_path)
    [r] = tldr.prompt_records(posts[:1], tok)
    assert r["prompt"] == (f"<|user|>{tldr.INSTRUCTION}\n\nSUBREDDIT: r/dogs\n\nTITLE: My dog barks\n\n"
                           "POST: He barks all night.\n\nIt is loud.\n<|assistant|>")
    assert r["question"] == "SUBREDDIT: r/dogs\n\nTITLE: My dog barks\n\nPOST: He barks all night.\n\nIt is loud."
    assert (r["post"], r["subreddit"]) == ("He barks all night.\n\nIt is loud.", "r/dogs")
    [plain] = tldr.prompt_records(posts[:1], tiny.tokenizer())
    assert plain["prompt"] == TRL_PROMPT  # no template: the TL;DR layout the hub rows hold
    assert tldr.prompt_records(posts[:1], tok, seq2seq=True)[0]["prompt"].startswith("summarize: SUBREDDIT")


def test_tldr_posts_are_cut_to_the_prompt_budget(tmp_path):
    tok = chat_tokenizer(tmp_path)
    p = tldr.Post("p", " ".join(f"word{i}" for i in range(200)), "Sum.", "Title", "r/x")
    [r] = tldr.prompt_records([p], tok, max_prompt_tokens=120)
    assert len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) <= 120
    assert r["post"].startswith("word0 word1") and r["post"].endswith(" …") and "word199" not in r["post"]
    assert r["post"] in r["question"] and r["post"] in r["prompt"]
    with pytest.raises(AlarmError, match="max_prompt_tokens=16 leaves no room for the post"):
        tldr.prompt_records([p], tok, max_prompt_tokens=16)


# ------------------------------------------------------------------------------------ the offline stand-ins


@pytest.mark.parametrize("module", [hh, tldr], ids=["hh", "tldr"])
def test_packaged_stand_in_is_what_its_generator_writes(module, tmp_path):
    packaged = (DATA / module.OFFLINE_FILE).read_text(encoding="utf-8")
    assert packaged == module.write_offline(tmp_path / "regenerated.jsonl").read_text(encoding="utf-8")


# sha256 of the sorted-key JSON of generate_offline(1), taken from the generators before their vocabulary tables
# moved from Python literals into the packaged JSON files: the move left every generated record as it was.
STAND_IN_SEED_1 = {"hh": "a7c289e3997de0003054252ece0e9db708ebe66be8af54309f193e6e7d1fe123",
                   "tldr": "120ef3602670f5e96ca2bd140db0314041de45b0291fc83529da900554bad0f7"}


@pytest.mark.parametrize("module", [hh, tldr], ids=["hh", "tldr"])
def test_stand_in_tables_are_package_data_and_the_generated_data_is_unchanged(module):
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["alarm"]
    assert any(fnmatch(f"data/{module.STANDIN_FILE}", g) for g in globs)  # an installed wheel has the tables
    tables = hh.standin_tables(module.STANDIN_FILE)  # read through importlib.resources
    assert tables["_columns"].keys() == tables.keys() - {"_columns"}  # every table says what its columns are
    data = json.dumps(module.generate_offline(1), sort_keys=True).encode()
    assert hashlib.sha256(data).hexdigest() == STAND_IN_SEED_1[module.__name__.rsplit(".", 1)[-1]]


@pytest.mark.parametrize("task", ["hh", "tldr"])
def test_stand_ins_give_100_distinct_held_out_prompts(task):
    tok = tiny.tokenizer()
    train = prompt_records(DataSpec(task=task), tok, "train")
    test = prompt_records(DataSpec(task=task), tok, "test")
    assert len(train) >= 100 and len(test) >= 100
    prompts = [r["prompt"] for r in train + test]
    assert len(set(prompts)) == len(prompts)  # every prompt distinct, none shared across the splits
    assert all(r["reference"].strip() and r["reference"] not in r["prompt"] for r in train + test)
    if task == "hh":
        assert Counter(r["question"].count("Human:") for r in test).keys() >= {1, 2}  # some multi-turn
        assert all(r["rejected"] and r["rejected"] != r["reference"] for r in test)
    else:
        assert len({r["subreddit"] for r in test}) >= 5


@pytest.mark.parametrize("recipe", ["vcb_hh_offline.yaml", "vcb_tldr_offline.yaml"])
def test_stand_in_rewards_prefer_the_reference_to_a_worse_reply(recipe, minilm):
    from alarm.config import build_reward_set
    from alarm.data.prompts import reward_inputs
    from alarm.rewards.base import summarize

    r = load_vcb_recipe(RECIPES / recipe)
    records = prompt_records(r.data, tiny.tokenizer(), "test")[:40]
    rs = build_reward_set(r)  # no download: the offline MiniLM
    prompts, columns = reward_inputs(records)
    good = [x["reference"] for x in records]
    worse = ([x["rejected"] for x in records] if r.data.task == "hh"
             else [x["reference"] for x in records[1:] + records[:1]])  # another post's summary
    raw_good = rs.raw_scores(prompts, good, **columns)
    raw_worse = rs.raw_scores(prompts, worse, **columns)
    assert set(raw_good) == {"holistic", *r.rewards.aspects}
    for name in raw_good:  # every reward, on average
        g = sum(summarize(v, c) for v, c in zip(raw_good[name], good)) / len(good)
        w = sum(summarize(v, c) for v, c in zip(raw_worse[name], worse)) / len(worse)
        assert g > w, (name, g, w)
    both = {k: v + v for k, v in columns.items()}
    rs.fit(prompts + prompts, good + worse, **both)
    returns, _ = rs.sequence_rewards(prompts + prompts, good + worse, **both)
    assert sum(a > b for a, b in zip(returns[: len(good)], returns[len(good):])) >= 0.8 * len(good)


def test_public_recipes_name_the_hub_data_and_reward_model():
    for name, task, data in (("vcb_hh.yaml", "hh", "Anthropic/hh-rlhf"), ("vcb_tldr.yaml", "tldr", "trl-lib/tldr")):
        r = load_vcb_recipe(RECIPES / name)
        assert (r.data.task, r.data.path) == (task, data) and not hh.is_local(r.data.path)
        assert r.rewards.holistic == {"type": "sequence_classifier", "batch_size": 8, "max_length": 512,
                                      "path": "OpenAssistant/reward-model-deberta-v3-large-v2"}
        assert r.sample.eval_prompts >= 100
    for name in ("vcb_hh_offline.yaml", "vcb_tldr_offline.yaml"):
        r = load_vcb_recipe(RECIPES / name)
        assert r.data.path is None and r.model.name == "smollm2-135m-instruct" and r.sample.eval_prompts >= 100


def test_a_deberta_v2_reward_model_reads_dialogue_and_reply_as_a_pair(tmp_path):
    """What the public recipes' reward model is (DebertaV2ForSequenceClassification, one label): built tiny
    here, saved as safetensors, loaded through the recipe's `sequence_classifier` entry."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from alarm.config import build_reward

    tok = tiny.tokenizer()
    torch.manual_seed(0)
    cfg = DebertaV2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128, num_labels=1, type_vocab_size=2,
                          pad_token_id=tok.pad_token_id, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    d = tmp_path / "rm"
    DebertaV2ForSequenceClassification(cfg).eval().save_pretrained(d)
    tok.save_pretrained(d)
    assert (d / "model.safetensors").exists()
    spec = {**load_vcb_recipe(RECIPES / "vcb_hh.yaml").rewards.holistic, "path": str(d)}
    reward = build_reward("rewards.holistic", spec, None, "holistic")
    [rec] = hh.prompt_records([hh.Dialogue("x", tuple(DIALOGUE), "4.")], tok)
    enc, cut = reward.encode(rec["question"], "4.")
    assert not cut and enc["input_ids"] == tok(rec["question"], "4.")["input_ids"]  # the pair, not one string
    scores = reward([rec["question"], rec["question"]], ["4.", "It is 5."])
    assert all(math.isfinite(s) for s in scores) and scores[0] != scores[1]
    # The published OpenAssistant checkpoint ships pytorch_model.bin: a pickle-only directory is refused (from
    # the hub, transformers takes its safetensors conversion instead), with a one-line error that says the fix.
    torch.save(reward.model.state_dict(), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(AlarmError, match="could not load reward model .*pass a directory with safetensors"):
        build_reward("rewards.holistic", spec, None, "holistic")


# ------------------------------------------------------------------ smoke: alarm vcb sample + train, tiny model


@pytest.fixture(scope="module")
def tiny_chat_policy(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy")
    tiny.causal_lm(0).save_pretrained(d)
    tok = chat_tokenizer(tmp_path_factory.mktemp("t"))
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("recipe", ["vcb_hh_offline.yaml", "vcb_tldr_offline.yaml"])
def test_stand_in_recipe_samples_and_trains_with_a_tiny_model(recipe, tiny_chat_policy, tmp_path, minilm):
    import datasets
    from safetensors.torch import load_file

    from alarm.cli import main

    n = 3
    overrides = [f"model.name={tiny_chat_policy}", f"output_dir={tmp_path / 'run'}", "data.max_train_prompts=4",
                 "sample.eval_prompts=2", f"sample.n={n}", "sample.max_new_tokens=6", "sample.prompts_per_shard=3",
                 "vcb.lora_layers=null", "vcb.max_steps=2", "vcb.batch_size=2", "vcb.micro_batch_size=2",
                 "vcb.learning_rate=1e-2", "vcb.eval_max_new_tokens=4"]
    config = str(RECIPES / recipe)
    assert main(["vcb", "sample", "--config", config, *overrides]) == 0
    ds = datasets.load_from_disk(str(tmp_path / "run" / "samples" / "dataset"))
    per_prompt = Counter(ds["prompt_id"])
    assert len(per_prompt) == 6 and set(per_prompt.values()) == {n}
    assert Counter(ds["split"]) == {"train": 4 * n, "test": 2 * n}
    assert all(math.isfinite(x) for x in ds["reward"]) and len(set(ds["reward"])) > 1
    assert all(p.startswith("<|") and p.endswith("<|assistant|>") for p in ds["prompt"])  # the chat template
    assert "reference" in ds.column_names

    assert main(["vcb", "train", "--config", config, *overrides]) == 0
    out = tmp_path / "run" / "train-vcb"
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    adapter = load_file(str(out / "checkpoints" / "step-000002" / "model" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)  # LoRA B starts at zero: training moved it
