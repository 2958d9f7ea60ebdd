"""alarm.rewards.hf_models (and the reward contract every backend keeps): tiny random HF models as sequence
classifiers (templates, truncation, published layouts such as UltraRM) and span models; bad input, every backend."""

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

from alarm.errors import AlarmError
from alarm.rewards.base import Dense, compute
from alarm.rewards.embedding import GroundingReward, ReferenceSimilarityReward, RelevanceReward
from alarm.rewards.hf_models import SequenceClassifierReward, SpanRewardModel, build_span_inputs
from alarm.rewards.simple import LanguageConfidenceReward, LengthReward, ReadabilityReward

PASSAGE = "The Eiffel Tower is a wrought-iron tower. It is located in Paris, France. It was completed in 1889."


# ---------------------------------------------------------------- tiny models


def tiny_config(tokenizer, num_labels):
    return BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels, initializer_range=0.5,
    )


@pytest.fixture(scope="module")
def classifier(minilm_tokenizer):
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config(minilm_tokenizer, 1)).eval()


def token_classifier(tokenizer, error: bool):
    """A tiny span model whose classifier bias forces every prediction to 'error' (label 1) or 'clean'."""
    torch.manual_seed(0)
    model = BertForTokenClassification(tiny_config(tokenizer, 2)).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 100.0] if error else [100.0, 0.0]))
    return model


class FlagNextToken(torch.nn.Module):
    """Token classifier stand-in: predicts 'error' at a position iff the *next* token is in ``bad_ids``.

    With a separator in front of each sentence, this flags exactly the sentences starting with a bad word,
    so the test sees whether predictions are read at the right separators (also across padded batches).
    """

    def __init__(self, bad_ids):
        super().__init__()
        self.config = BertConfig(num_labels=2, max_position_embeddings=128)
        self.bad_ids = torch.tensor(sorted(bad_ids))
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        nxt = torch.roll(input_ids, -1, dims=1)
        flag = torch.isin(nxt, self.bad_ids).float()
        logits = torch.stack([torch.zeros_like(flag), 20 * flag - 10], dim=-1)
        return type("Out", (), {"logits": logits})()


# ---------------------------------------------------------------- bad input, every backend


@pytest.fixture(scope="module")
def backends(minilm, minilm_tokenizer, classifier):
    return {
        "length": (LengthReward(), {}),
        "readability": (ReadabilityReward(), {}),
        "language": (LanguageConfidenceReward(), {}),
        "reference": (ReferenceSimilarityReward(minilm), {"reference": "ref"}),
        "grounding": (GroundingReward(minilm), {"passages": PASSAGE}),
        "relevance": (RelevanceReward(minilm), {}),
        "holistic": (SequenceClassifierReward(classifier, minilm_tokenizer), {}),
        "span": (SpanRewardModel(token_classifier(minilm_tokenizer, False), minilm_tokenizer), {}),
    }


NAMES = ["length", "readability", "language", "reference", "grounding", "relevance", "holistic", "span"]


@pytest.mark.parametrize("which", NAMES)
def test_every_backend_rejects_bad_batches(backends, which):
    reward, col = backends[which]
    cols = {k: [v] for k, v in col.items()}
    with pytest.raises(AlarmError, match="empty list"):
        reward([], [], **{k: [] for k in col})
    with pytest.raises(AlarmError, match="2 prompts but 1 completions"):
        reward(["a", "b"], ["x"], **cols)
    with pytest.raises(AlarmError, match="completion 0 is float"):
        reward(["a"], [math.nan], **cols)
    with pytest.raises(AlarmError, match="not one string"):
        reward("a", "x", **cols)


@pytest.mark.parametrize("which", NAMES)
def test_every_backend_returns_valid_values(backends, which):
    reward, col = backends[which]
    prompts = ["What is the Eiffel Tower?", "Where is it?"]
    completions = ["The Eiffel Tower is located in Paris. It is made of iron.", ""]
    cols = {k: [v, v] for k, v in col.items()}
    values = compute(reward, prompts, completions, **cols)  # checks lengths, types, finiteness
    assert len(values) == 2
    assert all(isinstance(v, Dense) for v in values if v is not None) == reward.dense
    assert isinstance(reward.name, str) and isinstance(reward.higher_is_better, bool)


@pytest.mark.parametrize("which,column", [("reference", "reference"), ("grounding", "passages")])
def test_missing_column_is_named(backends, which, column):
    reward, _ = backends[which]
    with pytest.raises(AlarmError, match=f"needs the column '{column}'"):
        reward(["q"], ["a"])
    with pytest.raises(AlarmError, match=f"column '{column}' must be a list with one entry per completion"):
        reward(["q", "q"], ["a", "b"], **{column: ["only one"]})


# ---------------------------------------------------------------- sequence classifier


def test_classifier_default_max_length_capped_by_positions(classifier, minilm_tokenizer):
    assert minilm_tokenizer.model_max_length == 512
    assert SequenceClassifierReward(classifier, minilm_tokenizer).max_length == 128


def test_classifier_batched_equals_single(classifier, minilm_tokenizer):
    prompts = ["What is a tower?", "Where is Paris? " * 5, "Hi", "Tell me about iron.", "Why?"]
    completions = ["A tall structure.", "In France.", "Hello there, how can I help you today?", "It rusts.", ""]
    batched = SequenceClassifierReward(classifier, minilm_tokenizer, batch_size=3)(prompts, completions)
    single = [SequenceClassifierReward(classifier, minilm_tokenizer, batch_size=1)([p], [c])[0]
              for p, c in zip(prompts, completions)]
    assert batched == pytest.approx(single, abs=1e-5)
    assert len(set(round(v, 6) for v in batched)) == 5  # the inputs matter


def test_classifier_truncates_prompt_not_completion(classifier, minilm_tokenizer):
    reward = SequenceClassifierReward(classifier, minilm_tokenizer, max_length=32)
    head = "the question is about towers " * 6  # 30 tokens: the limit falls inside it
    completion = "The Eiffel Tower is in Paris."
    a, b, c = reward([head + "and apples " * 30, head + "and rivers " * 30, head + "and apples " * 30],
                     [completion, completion, "Bananas are yellow fruit."])
    assert a == pytest.approx(b, abs=1e-5)  # prompt text beyond the limit was cut: identical inputs
    assert abs(a - c) > 1e-3  # the completion was read
    enc = minilm_tokenizer(head + "and apples " * 30, completion, truncation="only_first", max_length=32)
    assert len(enc["input_ids"]) == 32
    assert minilm_tokenizer.decode(enc["input_ids"]).endswith("the eiffel tower is in paris. [SEP]")


def test_classifier_overlong_completion(classifier, minilm_tokenizer):
    reward = SequenceClassifierReward(classifier, minilm_tokenizer, max_length=32)
    with pytest.raises(AlarmError, match="completion 1 takes .* lower max_new_tokens or raise max_length"):
        reward(["q", "q"], ["short", "word " * 40])


def bos_tokenizer():
    """tiny's byte-level BPE with Llama's post-processor: one <s> before a text, another before a pair's second."""
    import copy

    import tiny
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tiny.tokenizer().backend_tokenizer)
    backend.add_special_tokens(["<s>"])
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="<eos>", pad_token="<pad>")


def tiny_llama_config(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, **kw)


ULTRA = "Human: {prompt}\nAssistant: {completion}"


def test_template_reward_scores_the_one_string_it_renders():
    """UltraRM-style rewards read tokenizer("Human: …\nAssistant: …"): one <s>, not a pair with a second <s>."""
    from transformers import LlamaForSequenceClassification

    tok = bos_tokenizer()
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_llama_config(tok, num_labels=1)).eval()
    reward = SequenceClassifierReward(model, tok, template=ULTRA, batch_size=2)
    prompts, answers = ["Where is Paris?", "What boils at 100 degrees?", "Why?"], ["In France.", "Water.", "Because."]
    texts = [f"Human: {p}\nAssistant: {a}" for p, a in zip(prompts, answers)]
    with torch.no_grad():
        expected = [model(**tok(t, return_tensors="pt")).logits[0, 0].item() for t in texts]
    assert reward(prompts, answers) == pytest.approx(expected, abs=1e-5)
    enc, cut = reward.encode(prompts[0], answers[0])
    assert enc["input_ids"] == tok(texts[0])["input_ids"] and not cut
    assert enc["input_ids"].count(tok.bos_token_id) == 1
    assert reward.last_stats == {"prompts_cut": 0, "inputs": 3}
    with pytest.raises(AlarmError, match="template must contain"):
        SequenceClassifierReward(model, tok, template="{prompt}")


def test_template_reward_cuts_the_prompt_end_never_the_response():
    from transformers import LlamaForSequenceClassification

    tok = bos_tokenizer()
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_llama_config(tok, num_labels=1)).eval()
    reward = SequenceClassifierReward(model, tok, template=ULTRA, max_length=100)
    long_prompt = "question: Where is Paris? context: wikipage: Paris text: " + "The capital of France is Paris. " * 30
    answer = "Paris is in France, on the Seine."
    enc, cut = reward.encode(long_prompt, answer)
    assert cut and len(enc["input_ids"]) <= 100
    text = tok.decode(enc["input_ids"], skip_special_tokens=True)
    assert text.startswith("Human: question: Where is Paris? context: wikipage: Paris text: The capital")
    assert text.endswith("\nAssistant: " + answer)  # the whole response, after the (cut) prompt
    assert enc["input_ids"].count(tok.bos_token_id) == 1
    head = text.removeprefix("Human: ").removesuffix("\nAssistant: " + answer)
    assert long_prompt.startswith(head) and len(head) < len(long_prompt)
    assert len(tok(reward.render(long_prompt[: len(head) + 32], answer))["input_ids"]) > 100  # cut no more than needed
    scores = reward([long_prompt, "Where is Paris?"], [answer, answer])
    with torch.no_grad():
        assert scores[0] == pytest.approx(model(**tok(text, return_tensors="pt")).logits[0, 0].item(), abs=1e-5)
    assert reward.last_stats == {"prompts_cut": 1, "inputs": 2}
    with pytest.raises(AlarmError, match="completion 1 in the template takes .* lower max_new_tokens"):
        reward(["q", "q"], ["short", "word " * 120])


def test_classifier_checks_arguments(classifier, minilm_tokenizer):
    with pytest.raises(AlarmError, match="label_index 1 is out of range"):
        SequenceClassifierReward(classifier, minilm_tokenizer, label_index=1)
    with pytest.raises(AlarmError, match="batch_size"):
        SequenceClassifierReward(classifier, minilm_tokenizer, batch_size=0)


def test_classifier_restores_training_mode(minilm_tokenizer):
    model = BertForSequenceClassification(tiny_config(minilm_tokenizer, 1)).train()
    reward = SequenceClassifierReward(model, minilm_tokenizer)
    assert reward(["q"], ["a"]) == reward(["q"], ["a"])  # dropout off while scoring
    assert model.training


def test_classifier_from_pretrained(tmp_path, classifier, minilm_tokenizer):
    classifier.save_pretrained(tmp_path)
    minilm_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = SequenceClassifierReward.from_pretrained(str(tmp_path), batch_size=2, name="rm")
    assert loaded.name == "rm" and loaded.batch_size == 2
    original = SequenceClassifierReward(classifier, minilm_tokenizer)
    assert loaded(["q"], ["an answer"]) == pytest.approx(original(["q"], ["an answer"]), abs=1e-6)
    with pytest.raises(AlarmError, match="could not load reward model"):
        SequenceClassifierReward.from_pretrained(str(tmp_path / "missing"))


# ---------------------------------------------------------------- span reward model


def test_span_inputs_separators_and_pieces(minilm_tokenizer):
    completion = "The sky is blue. It rains today."
    inputs = build_span_inputs(minilm_tokenizer, "What is the weather?", completion, "sentence", None, 128)
    ids = inputs.encoding["input_ids"]
    assert inputs.piece_spans == [(0, 16), (17, 32)]
    assert [ids[p] for p in inputs.sep_positions] == [minilm_tokenizer.sep_token_id] * 2
    # the separator is followed by its piece's first token
    assert [minilm_tokenizer.decode([ids[p + 1]]) for p in inputs.sep_positions] == ["the", "it"]
    assert len(ids) == len(inputs.encoding["attention_mask"])


def test_span_inputs_custom_separator(minilm_tokenizer):
    inputs = build_span_inputs(minilm_tokenizer, "q", "A b. C d.", "sentence", "|", 64)
    ids = inputs.encoding["input_ids"]
    assert [ids[p] for p in inputs.sep_positions] == minilm_tokenizer.convert_tokens_to_ids(["|", "|"])
    assert inputs.piece_spans == [(0, 4), (5, 9)]


def test_span_inputs_truncate_prompt_only(minilm_tokenizer):
    completion = "The sky is blue. It rains today."
    inputs = build_span_inputs(minilm_tokenizer, "weather " * 200, completion, "sentence", None, 40)
    ids = inputs.encoding["input_ids"]
    assert len(ids) == 40
    assert minilm_tokenizer.decode(ids).endswith("[SEP] the sky is blue. [SEP] it rains today. [SEP]")
    assert len(inputs.sep_positions) == 2
    with pytest.raises(AlarmError, match="lower max_new_tokens or raise max_length"):
        build_span_inputs(minilm_tokenizer, "q", "Word word word. " * 20, "sentence", None, 40)


@pytest.mark.parametrize("error,sign", [(True, -1), (False, 1)])
def test_span_model_forced_predictions(minilm_tokenizer, error, sign):
    reward = SpanRewardModel(token_classifier(minilm_tokenizer, error), minilm_tokenizer, value=0.5)
    completion = "The sky is blue. It rains today."
    d, empty = reward(["What is the weather?", "q"], [completion, ""])
    assert d == Dense(points=((16, sign * 0.5), (32, sign * 0.5)), level="sentence")
    assert empty == Dense(level="sentence")


def test_span_model_reads_each_separator(minilm_tokenizer):
    bad = set(minilm_tokenizer.convert_tokens_to_ids(["it", "cats"]))
    reward = SpanRewardModel(FlagNextToken(bad), minilm_tokenizer, level="subsentence", value=0.3, batch_size=2)
    completions = [
        "The sky is blue, it rains today.",
        "Dogs bark. Cats meow, birds sing; it is loud.",
        "No errors here.",
    ]
    prompts = ["q", "a much longer prompt " * 10, "q"]
    out = reward(prompts, completions)
    assert out[0].points == ((16, 0.3), (32, -0.3))
    assert out[1].points == ((10, 0.3), (21, -0.3), (33, 0.3), (45, -0.3))
    assert out[2].points == ((15, 0.3),)
    assert all(d.level == "subsentence" for d in out)
    single = [reward([p], [c])[0] for p, c in zip(prompts, completions)]
    assert single == out


def test_span_model_overlong_completion(minilm_tokenizer):
    reward = SpanRewardModel(token_classifier(minilm_tokenizer, False), minilm_tokenizer, max_length=40)
    with pytest.raises(AlarmError, match="completion 1: .*lower max_new_tokens"):
        reward(["q", "q"], ["Fine.", "Word word word. " * 20])


def test_span_model_checks_arguments(minilm_tokenizer):
    model = token_classifier(minilm_tokenizer, False)
    with pytest.raises(AlarmError, match="level must be"):
        SpanRewardModel(model, minilm_tokenizer, level="token")
    with pytest.raises(AlarmError, match="error_label 2 is out of range"):
        SpanRewardModel(model, minilm_tokenizer, error_label=2)
    with pytest.raises(AlarmError, match="value must be"):
        SpanRewardModel(model, minilm_tokenizer, value=math.nan)


def test_span_model_from_pretrained(tmp_path, minilm_tokenizer):
    model = token_classifier(minilm_tokenizer, True)
    model.save_pretrained(tmp_path)
    minilm_tokenizer.save_pretrained(tmp_path)
    reward = SpanRewardModel.from_pretrained(str(tmp_path), level="subsentence", value=0.3)
    (d,) = reward(["q"], ["Yes, it is."])
    assert d.points == ((4, -0.3), (11, -0.3))


# ---------------------------------------------------------------- published reward-model layouts


def save_ultrarm_layout(path, seed=0, head=True, shard=False):
    """A tiny random Llama saved as openbmb/UltraRM-13b is: LlamaModel under `model.`, bias-free `regression_head`."""
    from huggingface_hub import save_torch_state_dict
    from transformers import LlamaModel

    tok = bos_tokenizer()
    cfg = tiny_llama_config(tok)
    torch.manual_seed(seed)
    base = LlamaModel(cfg).eval()
    weights = {f"model.{k}": v.contiguous() for k, v in base.state_dict().items()}
    if head:
        weights["regression_head.weight"] = torch.randn(1, cfg.hidden_size)
    cfg.architectures = ["LlamaRewardModel"]
    cfg.save_pretrained(path)
    tok.save_pretrained(path)
    save_torch_state_dict(weights, path, max_shard_size="40KB" if shard else "10GB")
    return base, weights.get("regression_head.weight"), tok


def ultrarm_forward(base, head, enc):
    """UltraRM's own forward: the head on every position, read at the last attended token."""
    with torch.no_grad():
        rewards = (base(**enc).last_hidden_state @ head.T).squeeze(-1)
    ends = enc["attention_mask"].cumsum(dim=1).argmax(dim=1).view(-1, 1)
    return torch.gather(rewards, 1, ends).squeeze(1).tolist()


@pytest.mark.parametrize("shard", [False, True])
def test_ultrarm_layout_loads_as_published(tmp_path, shard):
    base, head, tok = save_ultrarm_layout(tmp_path, shard=shard)
    assert (tmp_path / ("model.safetensors.index.json" if shard else "model.safetensors")).exists()
    reward = SequenceClassifierReward.from_pretrained(str(tmp_path), template=ULTRA, batch_size=4)
    prompts, answers = ["Where is Paris?", "Why is the sky blue at noon?"], ["In France.", "Scattering."]
    texts = [f"Human: {p}\nAssistant: {a}" for p, a in zip(prompts, answers)]
    expected = [ultrarm_forward(base, head, tok(t, return_tensors="pt"))[0] for t in texts]
    assert reward(prompts, answers) == pytest.approx(expected, abs=1e-5)  # batched, padded
    assert reward.model.config.num_labels == 1


def test_reward_model_without_head_weights_is_an_error(tmp_path, minilm_tokenizer):
    from transformers import BertModel

    save_ultrarm_layout(tmp_path / "ultra", head=False)
    with pytest.raises(AlarmError, match=r"^reward model .* has no weights for score.weight in its checkpoint"):
        SequenceClassifierReward.from_pretrained(str(tmp_path / "ultra"))
    BertModel(tiny_config(minilm_tokenizer, 1)).save_pretrained(tmp_path / "bert")  # a backbone without a head
    minilm_tokenizer.save_pretrained(tmp_path / "bert")
    with pytest.raises(AlarmError, match="no weights for classifier.bias and 1 more") as e:
        SequenceClassifierReward.from_pretrained(str(tmp_path / "bert"))
    assert "\n" not in str(e.value)
    with pytest.raises(AlarmError, match="no weights for classifier"):
        SpanRewardModel.from_pretrained(str(tmp_path / "bert"))
