"""Rewards from Hugging Face reward models: a holistic sequence classifier and a FineGrainedRLHF span model.

Without a template they read the prompt as the first sequence and the response as the second; with a template
(e.g. UltraRM's ``"Human: {prompt}\\nAssistant: {completion}"``) they read the one string the model was trained on.
Either way, when the input is too long only the *prompt* is cut, at its end (the passages in the question-first
QA-Feedback layout): a reward for a response it did not fully read would be a reward for the wrong text. A
response that does not fit on its own is an error, not a silent cut. A checkpoint without weights for its head
is an error too (transformers would start that head at random and score noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alarm.errors import AlarmError
from alarm.rewards.base import Dense, check_batch
from alarm.text import sentence_spans, subsentence_spans

_HUGE = 1_000_000  # tokenizers without a limit report model_max_length ~ 1e30


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _load(auto_cls, path: str, trust_remote_code: bool, device: str, dtype):
    """Model + tokenizer from a local directory or hub id; safetensors only (no pickle code execution).

    openbmb/UltraRM's ``LlamaRewardModel`` (a LlamaModel under ``model.`` and a bias-free ``regression_head``
    read at the last non-pad token) is LlamaForSequenceClassification with one label and its head named
    ``score``: it loads as that, its head weights renamed on the way in, without its remote code.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        extra = {}
        if auto_cls is AutoModelForSequenceClassification and "LlamaRewardModel" in (config.architectures or []):
            config.num_labels = 1
            extra["key_mapping"] = {r"^regression_head\.": "score."}
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, info = auto_cls.from_pretrained(
            path, config=config, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype,
            output_loading_info=True, **extra,
        )
    except (OSError, ValueError) as e:
        raise AlarmError(
            f"could not load reward model {path!r} ({_first_line(e)}); pass a directory with safetensors "
            "weights and a tokenizer, or a hub id this machine can reach"
        ) from None
    missing = sorted(info["missing_keys"])
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise AlarmError(
            f"reward model {path!r} has no weights for {missing[0]}{more} in its checkpoint, so that part would be "
            f"random; give a checkpoint trained as a {auto_cls.__name__.removeprefix('AutoModelFor')} reward model"
        )
    return model.to(device).eval(), tokenizer


def resolve_max_length(model, tokenizer, max_length: int | None) -> int:
    """``max_length`` if given, else the tokenizer's limit capped at the model's position embeddings."""
    if max_length is not None:
        if not isinstance(max_length, int) or max_length < 4:
            raise AlarmError(f"max_length must be an integer of at least 4 tokens, got {max_length!r}")
        return max_length
    limits = []
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < _HUGE:
        limits.append(tok_limit)
    pos_limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(pos_limit, int) and pos_limit > 0:
        limits.append(pos_limit)
    if not limits:
        raise AlarmError("cannot tell the reward model's input limit; pass max_length explicitly")
    return min(limits)


def _too_long(tokenizer, firsts: Sequence[str], seconds: Sequence[str], max_length: int):
    """First (index, second-sequence tokens, special tokens) that cannot fit even with a one-token prompt."""
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    n_first = [len(x) for x in tokenizer(list(firsts), add_special_tokens=False)["input_ids"]]
    n_second = [len(x) for x in tokenizer(list(seconds), add_special_tokens=False)["input_ids"]]
    for i, (a, b) in enumerate(zip(n_first, n_second)):
        if a + b + specials > max_length and b + specials + 1 > max_length:
            return i, b, specials
    return None


def _too_long_message(what: str, n: int, specials: int, max_length: int) -> str:
    return (
        f"{what} takes {n} tokens but the reward model reads at most {max_length} ({specials} special tokens "
        "and at least one prompt token included); lower max_new_tokens or raise max_length"
    )


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class _EvalMode:
    """Eval mode (no dropout) + inference mode while scoring; restores the model's previous mode."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.inference = torch.inference_mode()
        self.inference.__enter__()

    def __exit__(self, *exc):
        self.inference.__exit__(*exc)
        self.model.train(self.was_training)


class SequenceClassifierReward:
    """Holistic reward: ``logits[:, label_index]`` of an ``AutoModelForSequenceClassification`` reward model.

    Input is the pair (prompt, completion), or with ``template`` (a string containing ``{completion}`` and
    usually ``{prompt}``) the one string it renders, encoded as the tokenizer encodes a single text: UltraRM was
    trained on ``tokenizer("Human: …\\nAssistant: …")`` (one BOS, the answer's first token as in running text),
    so scoring a tokenizer pair would feed it a second BOS at the answer. Inputs are scored ``batch_size`` at a
    time, sorted by length to limit padding. ``last_stats`` counts the inputs of the latest call whose prompt
    was cut to fit ``max_length`` (``prompts_cut`` of ``inputs``).
    """

    higher_is_better = True
    dense = False

    def __init__(self, model, tokenizer, batch_size: int = 8, max_length: int | None = None,
                 name: str = "holistic", label_index: int = 0, template: str | None = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise AlarmError(f"reward {name!r}: batch_size must be a positive integer, got {batch_size!r}")
        num_labels = getattr(model.config, "num_labels", 1)
        if not 0 <= label_index < num_labels:
            raise AlarmError(
                f"reward {name!r}: label_index {label_index} is out of range for a model with {num_labels} labels"
            )
        if template is not None and "{completion}" not in template:
            raise AlarmError(f"reward {name!r}: template must contain '{{completion}}', got {template!r}")
        if tokenizer.pad_token is None:
            raise AlarmError(
                f"reward {name!r}: the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos "
                "token) and model.config.pad_token_id to match"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = resolve_max_length(model, tokenizer, max_length)
        self.name = name
        self.label_index = label_index
        self.template = template
        self.last_stats: dict[str, int] = {}

    @classmethod
    def from_pretrained(cls, path: str, trust_remote_code: bool = False, device: str = "cpu", dtype=None, **kw):
        """Load a reward model (safetensors only); ``kw`` go to the constructor (batch_size, name, ...)."""
        from transformers import AutoModelForSequenceClassification

        model, tokenizer = _load(AutoModelForSequenceClassification, path, trust_remote_code, device, dtype)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
            model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model, tokenizer, **kw)

    def render(self, prompt: str, completion: str) -> str:
        """The template filled in: the one string a template reward model reads."""
        head, tail = self.template.split("{completion}", 1)
        return head.replace("{prompt}", prompt) + completion + tail.replace("{prompt}", prompt)

    def encode(self, prompt: str, completion: str, i: int = 0) -> tuple[dict, bool]:
        """The model's input for one response, and whether its prompt was cut (at its end) to fit."""
        tok, limit = self.tokenizer, self.max_length
        if self.template is None:
            enc = tok(prompt, completion)
            if len(enc["input_ids"]) <= limit:
                return dict(enc), False
            bad = _too_long(tok, [prompt], [completion], limit)
            if bad is not None:
                raise AlarmError(f"reward {self.name!r}: " + _too_long_message(f"completion {i}", bad[1], bad[2], limit))
            return dict(tok(prompt, completion, truncation="only_first", max_length=limit)), True

        def fitting(n_chars: int):
            enc = tok(self.render(prompt[:n_chars], completion))
            return dict(enc) if len(enc["input_ids"]) <= limit else None

        best = fitting(len(prompt))
        if best is not None:
            return best, False
        best = fitting(0)
        if best is None:
            n = len(tok(self.render("", completion))["input_ids"])
            raise AlarmError(f"reward {self.name!r}: completion {i} in the template takes {n} tokens with an empty "
                             f"prompt but the reward model reads at most {limit}; lower max_new_tokens or raise max_length")
        cuts = [0] + [j for j, ch in enumerate(prompt) if ch.isspace()]  # cut between words
        lo, hi = 0, len(cuts) - 1  # the longest prompt head that fits: cuts[lo] does
        while lo < hi:
            mid = (lo + hi + 1) // 2
            enc = fitting(cuts[mid])
            if enc is None:
                hi = mid - 1
            else:
                lo, best = mid, enc
        return best, True

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        check_batch(self.name, prompts, completions)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise AlarmError(f"reward {self.name!r}: prompt {i} is {type(p).__name__}; expected a string")
        items = [self.encode(p, c, i) for i, (p, c) in enumerate(zip(prompts, completions))]
        self.last_stats = {"prompts_cut": sum(cut for _, cut in items), "inputs": len(items)}
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]["input_ids"]))
        out: list[float | None] = [None] * len(items)
        device = _device(self.model)
        with _EvalMode(self.model):
            for k in range(0, len(order), self.batch_size):
                idx = order[k : k + self.batch_size]
                batch = self.tokenizer.pad([items[i][0] for i in idx], return_tensors="pt").to(device)
                logits = self.model(**batch).logits
                for i, v in zip(idx, logits[:, self.label_index].float().tolist()):
                    out[i] = v
        return out


@dataclass
class SpanInputs:
    """One (prompt, completion) example in the span reward model's input format.

    ``encoding``: input_ids / attention_mask (/ token_type_ids) lists, ready for ``tokenizer.pad``.
    ``sep_positions[j]``: token index of the separator in front of piece j; the model's prediction there
    says whether piece j has an error. ``piece_spans[j]``: that piece's [start, end) in the completion.
    """

    encoding: dict
    sep_positions: list[int]
    piece_spans: list[tuple[int, int]]


def build_span_inputs(tokenizer, prompt: str, completion: str, level: str = "sentence",
                      separator: str | None = None, max_length: int = 512) -> SpanInputs:
    """FineGrainedRLHF input: prompt as the first sequence; ``"<sep> piece <sep> piece ..."`` as the second.

    Shared by the reward and the reward-model trainer so both see exactly the same format. Only the prompt
    is truncated; a completion that cannot fit raises AlarmError.
    """
    if level not in ("sentence", "subsentence"):
        raise AlarmError(f"span reward level must be 'sentence' or 'subsentence', got {level!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise AlarmError("span rewards need a fast tokenizer (character offsets); load it with use_fast=True")
    separator = separator or tokenizer.sep_token
    if not separator:
        raise AlarmError("the tokenizer has no sep_token; pass separator= (the string the span model was trained with)")
    spans = sentence_spans(completion) if level == "sentence" else subsentence_spans(completion)
    parts, sep_chars, pos = [], [], 0
    for s, e in spans:
        sep_chars.append(pos)
        part = f"{separator} {completion[s:e]}"
        parts.append(part)
        pos += len(part) + 1
    second = " ".join(parts)
    bad = _too_long(tokenizer, [prompt], [second], max_length)
    if bad is not None:
        raise AlarmError(_too_long_message("the completion with separators", bad[1], bad[2], max_length))
    enc = tokenizer(prompt, second, truncation="only_first", max_length=max_length, return_offsets_mapping=True)
    seq_ids = enc.sequence_ids()
    offsets = enc.pop("offset_mapping")
    sep_positions = []
    for c in sep_chars:
        hit = next((j for j, (sid, (a, b)) in enumerate(zip(seq_ids, offsets)) if sid == 1 and a <= c < b), None)
        if hit is None:
            raise AlarmError(
                f"separator {separator!r} produced no token; use a separator the tokenizer keeps (e.g. its sep_token)"
            )
        sep_positions.append(hit)
    return SpanInputs(encoding=dict(enc), sep_positions=sep_positions, piece_spans=list(spans))


class SpanRewardModel:
    """Fine-grained reward from an ``AutoModelForTokenClassification`` model (FineGrainedRLHF style).

    At the separator in front of each sentence (or sub-sentence) the model predicts whether that piece has an
    error (``argmax == error_label``): the piece gets ``-value`` at its last character if so, ``+value`` if
    not (paper: factuality ±0.5 per sentence, relevance ±0.3 per sub-sentence). The prompt should hold the
    question and passages. An empty completion gets an empty ``Dense``.
    """

    higher_is_better = True
    dense = True

    def __init__(self, model, tokenizer, level: str = "sentence", value: float = 0.5, error_label: int = 1,
                 separator: str | None = None, batch_size: int = 8, max_length: int | None = None,
                 name: str = "fine_grained"):
        if level not in ("sentence", "subsentence"):
            raise AlarmError(f"reward {name!r}: level must be 'sentence' or 'subsentence', got {level!r}")
        if not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
            raise AlarmError(f"reward {name!r}: value must be a positive number (±value is emitted), got {value}")
        num_labels = getattr(model.config, "num_labels", 2)
        if not 0 <= error_label < num_labels:
            raise AlarmError(
                f"reward {name!r}: error_label {error_label} is out of range for a model with {num_labels} labels"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise AlarmError(f"reward {name!r}: batch_size must be a positive integer, got {batch_size!r}")
        separator = separator or tokenizer.sep_token
        if not separator:
            raise AlarmError(f"reward {name!r}: the tokenizer has no sep_token; pass separator=")
        if tokenizer.pad_token is None:
            raise AlarmError(f"reward {name!r}: the tokenizer has no pad token; set tokenizer.pad_token")
        self.model = model
        self.tokenizer = tokenizer
        self.level = level
        self.value = float(value)
        self.error_label = error_label
        self.separator = separator
        self.batch_size = batch_size
        self.max_length = resolve_max_length(model, tokenizer, max_length)
        self.name = name

    @classmethod
    def from_pretrained(cls, path: str, trust_remote_code: bool = False, device: str = "cpu", dtype=None, **kw):
        """Load a span reward model (safetensors only); ``kw`` go to the constructor (level, value, ...)."""
        from transformers import AutoModelForTokenClassification

        model, tokenizer = _load(AutoModelForTokenClassification, path, trust_remote_code, device, dtype)
        return cls(model, tokenizer, **kw)

    def inputs(self, prompt: str, completion: str) -> SpanInputs:
        return build_span_inputs(self.tokenizer, prompt, completion, self.level, self.separator, self.max_length)

    def __call__(self, prompts, completions, **columns) -> list[Dense | None]:
        check_batch(self.name, prompts, completions)
        items = []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            if not isinstance(p, str):
                raise AlarmError(f"reward {self.name!r}: prompt {i} is {type(p).__name__}; expected a string")
            try:
                items.append(self.inputs(p, c))
            except AlarmError as e:
                raise AlarmError(f"reward {self.name!r}, completion {i}: {e}") from None
        out: list[Dense | None] = [Dense(level=self.level)] * len(items)
        todo = sorted((i for i, it in enumerate(items) if it.sep_positions),
                      key=lambda i: len(items[i].encoding["input_ids"]))
        device = _device(self.model)
        with _EvalMode(self.model):
            for k in range(0, len(todo), self.batch_size):
                idx = todo[k : k + self.batch_size]
                batch = self.tokenizer.pad(
                    [items[i].encoding for i in idx], padding_side="right", return_tensors="pt"
                ).to(device)
                preds = self.model(**batch).logits.argmax(dim=-1)
                for row, i in enumerate(idx):
                    it = items[i]
                    errors = preds[row, it.sep_positions].tolist()
                    out[i] = Dense(
                        points=tuple(
                            (end, -self.value if err == self.error_label else self.value)
                            for (_, end), err in zip(it.piece_spans, errors)
                        ),
                        level=self.level,
                    )
        return out
