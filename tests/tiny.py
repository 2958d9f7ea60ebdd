"""Tiny random models and a real byte-level BPE tokenizer, built in-process (no downloads)."""

from __future__ import annotations

import functools

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Café, naïve, über, señor, 日本語, 中文, emoji 😀 and 🚀 appear here.",
    "A question: what is the answer? The answer is forty-two!",
]


@functools.lru_cache(maxsize=1)
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def causal_lm(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def seq2seq_lm(seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2,
                   num_heads=4, decoder_start_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id)
    model = T5ForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.decoder_start_token_id = tok.pad_token_id
    return model


def tiny_bert(kind, tok, seed=0):
    """A tiny BERT reward model: a token classifier for span kinds, else a one-label sequence classifier."""
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    if kind in ("factuality", "relevance"):
        cfg.num_labels = 2
        return BertForTokenClassification(cfg)
    cfg.num_labels = 1
    return BertForSequenceClassification(cfg)


def attention_calls(model, layer: int):
    """A list that grows by one each time decoder layer ``layer`` of the (peft-wrapped) tiny causal LM runs its
    attention, and the hook handle to remove: how the frozen-trunk tests see which layers a pass computed."""
    calls = []
    target = model.get_base_model().model.layers[layer]
    return calls, target.self_attn.register_forward_hook(lambda *_: calls.append(1))
