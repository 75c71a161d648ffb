import random
from collections.abc import Sequence

import pytest
import torch
from tokenizers.processors import TemplateProcessing
from transformers import GPT2Config, GPT2LMHeadModel

from lightning_premem.probes import (
    DEFAULT_STOP,
    CompletionSampler,
    HFSampler,
    encode_prompt_target,
    perplexity,
    sampling,
    seeds,
    target_perplexity,
)
from lightning_premem.tokenization import char_tokenizer

# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


def tiny_gpt2(tok, seed: int = 0, n_positions: int = 256) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_gpt2(tok)


def no_pad_tokenizer():
    tok = char_tokenizer()
    tok.pad_token = None
    assert tok.pad_token_id is None and tok.eos_token_id is not None
    return tok


def bos_tokenizer():
    tok = char_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    return tok


def random_text(rng: random.Random, n: int, alphabet: str = "abcdefgh 0123456789+=\n") -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def reference_perplexity(model, pairs) -> torch.Tensor:
    """Independent batch-size-1 loop: one concatenated sequence at a time."""
    values = []
    with torch.no_grad():
        for prompt_ids, target_ids in pairs:
            ids = torch.tensor([list(prompt_ids) + list(target_ids)])
            logits = model(input_ids=ids).logits[0]
            p = len(prompt_ids)
            ce = torch.nn.functional.cross_entropy(logits[p - 1 : -1], torch.tensor(list(target_ids)))
            values.append(torch.exp(ce).item())
    return torch.tensor(values)


def training_flags(model) -> list[bool]:
    return [m.training for m in model.modules()]


# --------------------------------------------------------------------------------------------
# encode_prompt_target
# --------------------------------------------------------------------------------------------


def test_encode_returns_exactly_the_tokenizer_ids(tok):
    prompt, target = "What is 2+3?\nAnswer:", " 2+3=5\nDone."
    prompt_ids, target_ids = encode_prompt_target(tok, prompt, target)
    assert prompt_ids == tok(prompt)["input_ids"]
    assert target_ids == tok(target, add_special_tokens=False)["input_ids"]
    assert all(isinstance(i, int) for i in prompt_ids + target_ids)


def test_encode_prompt_gets_special_tokens_target_does_not():
    tok = bos_tokenizer()
    prompt_ids, target_ids = encode_prompt_target(tok, "1+1=", "2")
    assert (
        prompt_ids
        == tok("1+1=")["input_ids"]
        == [tok.bos_token_id, *tok("1+1=", add_special_tokens=False)["input_ids"]]
    )
    assert target_ids == tok("2", add_special_tokens=False)["input_ids"]
    # An empty prompt still has its BOS to condition on.
    assert encode_prompt_target(tok, "", "2")[0] == [tok.bos_token_id]


def test_encode_errors(tok):
    with pytest.raises(ValueError, match=r"prompt .* encodes to no tokens"):
        encode_prompt_target(tok, "", "x")
    with pytest.raises(ValueError, match=r"target .* encodes to no tokens"):
        encode_prompt_target(tok, "x", "")
    with pytest.raises(TypeError, match="`prompt` must be a string"):
        encode_prompt_target(tok, [1, 2], "x")
    with pytest.raises(TypeError, match="`target` must be a string"):
        encode_prompt_target(tok, "x", None)


# --------------------------------------------------------------------------------------------
# target_perplexity
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(tok):
    rng = random.Random(1)
    lengths = [(1, 1), (1, 40), (40, 1), (3, 3), (60, 60), (2, 90), (17, 5)]
    lengths += [(rng.randint(1, 50), rng.randint(1, 50)) for _ in range(15)]
    return [encode_prompt_target(tok, random_text(rng, p), random_text(rng, t)) for p, t in lengths]


@pytest.fixture(scope="module")
def reference(model, pairs):
    return reference_perplexity(model.eval(), pairs)


@pytest.mark.parametrize("max_batch_tokens", [1, 200, 1000, 10**9])
def test_perplexity_matches_batch_size_one_reference(model, pairs, reference, max_batch_tokens):
    expected = reference
    got = target_perplexity(model, pairs, pad_token_id=0, max_batch_tokens=max_batch_tokens)
    assert got.dtype == torch.float32 and got.shape == (len(pairs),) and got.device.type == "cpu"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=0)
    assert (got > 1).all()


def test_perplexity_order_preserved_and_padding_value_irrelevant(model, pairs):
    base = target_perplexity(model, pairs, pad_token_id=0)
    perm = list(range(len(pairs)))
    random.Random(5).shuffle(perm)
    shuffled = target_perplexity(model, [pairs[i] for i in perm], pad_token_id=17)
    torch.testing.assert_close(shuffled, base[perm], rtol=1e-5, atol=0)


def test_perplexity_batches_respect_token_budget():
    lengths = [5, 50, 7, 50, 20, 1, 33]
    batches = perplexity._token_budget_batches(lengths, 100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 100
    assert perplexity._token_budget_batches(lengths, 1) == [[1], [3], [6], [4], [2], [0], [5]]


def test_perplexity_depends_on_the_prompt(model, tok):
    target = tok(" 4\nDone.", add_special_tokens=False)["input_ids"]
    a, b = target_perplexity(
        model, [(tok("2+2=")["input_ids"], target), (tok("9*9=")["input_ids"], target)], pad_token_id=0
    )
    assert abs(a.item() - b.item()) > 1e-4


def test_perplexity_boundary_comes_from_token_ids(model):
    # The same concatenated sequence, split at a different boundary, scores different tokens.
    seq = [5, 6, 7, 8, 9, 10]
    at2, at4 = target_perplexity(model, [(seq[:2], seq[2:]), (seq[:4], seq[4:])], pad_token_id=0)
    ref = reference_perplexity(model.eval(), [(seq[:2], seq[2:]), (seq[:4], seq[4:])])
    torch.testing.assert_close(torch.stack([at2, at4]), ref, rtol=1e-4, atol=0)
    assert abs(at2.item() - at4.item()) > 1e-4


def test_perplexity_progress_and_empty(model, pairs):
    seen: list[int] = []
    target_perplexity(model, pairs, pad_token_id=0, max_batch_tokens=300, progress=seen.append)
    assert sum(seen) == len(pairs) and len(seen) > 1
    assert target_perplexity(model, [], pad_token_id=0).shape == (0,)


def test_perplexity_result_is_a_normal_tensor(model, pairs):
    out = target_perplexity(model, pairs[:3], pad_token_id=0)
    assert not out.is_inference()
    out.add_(1)  # usable in place outside inference mode


def test_perplexity_works_on_plain_module():
    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 10)

        def forward(self, input_ids):
            return self.emb(input_ids)

    torch.manual_seed(0)
    bigram = Bigram()
    got = target_perplexity(bigram, [([1, 2], [3, 4]), ([5], [6])], pad_token_id=0)
    logp = torch.log_softmax(bigram.emb.weight.detach(), -1)
    expected = torch.tensor([torch.exp(-(logp[2, 3] + logp[3, 4]) / 2), torch.exp(-logp[5, 6])])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)


def test_perplexity_passes_all_ones_mask_to_wrappers_that_take_one(model, pairs):
    # e.g. a LightningModule whose forward(input_ids, attention_mask=None) wraps the HF model.
    masks: list[torch.Tensor] = []

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None):
            masks.append(attention_mask)
            return self.model(input_ids=input_ids, attention_mask=attention_mask)

    got = target_perplexity(Wrapper(), pairs, pad_token_id=0, max_batch_tokens=500)
    torch.testing.assert_close(got, target_perplexity(model, pairs, pad_token_id=0), rtol=1e-5, atol=0)
    assert len(masks) > 1 and all(m is not None and bool((m == 1).all()) for m in masks)


def test_perplexity_restores_training_flags(tok, pairs):
    model = tiny_gpt2(tok)
    model.train()
    model.transformer.h[0].eval()  # a mixed state must come back exactly
    before = training_flags(model)
    seen_training: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: seen_training.append(module.training))
    target_perplexity(model, pairs[:4], pad_token_id=0)
    assert seen_training and not any(seen_training)  # ran in eval mode
    assert training_flags(model) == before


def test_perplexity_restores_mode_when_forward_raises(tok, pairs, monkeypatch):
    model = tiny_gpt2(tok).train()

    def boom(*args, **kwargs):
        assert not model.training
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(model, "forward", boom)
    with pytest.raises(RuntimeError, match="simulated failure"):
        target_perplexity(model, pairs[:4], pad_token_id=0)
    assert model.training and all(training_flags(model))


def test_perplexity_too_long_raises_before_touching_the_model(tok, monkeypatch):
    model = tiny_gpt2(tok, n_positions=16).train()
    monkeypatch.setattr(model, "eval", lambda: pytest.fail("model.eval() must not be called"))
    with pytest.raises(ValueError, match=r"maximum of 16 .*#1: 20.*Truncate"):
        target_perplexity(model, [([4] * 6, [5] * 6), ([4] * 10, [5] * 10)], pad_token_id=0)
    assert model.training and all(training_flags(model))


@pytest.mark.parametrize(
    ("pairs_", "kwargs", "error", "match"),
    [
        ([([], [4])], {}, ValueError, "no prompt tokens"),
        ([([4], [])], {}, ValueError, "no target tokens"),
        ([([4], [5], [6])], {}, ValueError, r"\(prompt_ids, target_ids\) pair"),
        ([([4], [-1])], {}, ValueError, "non-negative"),
        ([([4], [5.0])], {}, TypeError, "must hold ints"),
        ([([4], [10_000])], {}, ValueError, "out of range for the model's vocabulary"),
        ([([4], [5])], {"pad_token_id": None}, TypeError, "`pad_token_id` must be an int >= 0, got NoneType None"),
        ([([4], [5])], {"max_batch_tokens": 0}, ValueError, "`max_batch_tokens` must be an int >= 1, got 0"),
    ],
)
def test_perplexity_validation(model, pairs_, kwargs, error, match):
    with pytest.raises(error, match=match):
        target_perplexity(model, pairs_, **{"pad_token_id": 0, **kwargs})


# --------------------------------------------------------------------------------------------
# HFSampler
# --------------------------------------------------------------------------------------------

PROMPTS = ["1+1=", "What is 12+30?\nAnswer:", "x", "a much longer prompt, to force a lot of left padding =="]


def test_same_seeds_same_completions_different_seeds_differ(model, tok):
    sampler = HFSampler(model, tok, num_samples=3, temperature=1.0, max_new_tokens=12, stop=None)
    first = sampler.sample(PROMPTS, [1, 2, 3, 4])
    assert first == sampler.sample(PROMPTS, [1, 2, 3, 4])
    assert [len(s) for s in first] == [3, 3, 3, 3]
    other = sampler.sample(PROMPTS, [11, 12, 13, 14])
    assert all(a != b for a, b in zip(first, other, strict=True))
    # The k samples of one prompt differ from each other too.
    assert all(len(set(samples)) == 3 for samples in first)
    # The same prompt with the same seed twice in one call.
    twice = sampler.sample(["1+1=", "1+1="], [1, 1])
    assert twice == [first[0], first[0]]


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_completions_independent_of_batch_composition(model, tok, temperature):
    kwargs = {"num_samples": 2, "temperature": temperature, "max_new_tokens": 15, "stop": None}
    seeds = [101, 7, 33, 2024]
    alone = [
        HFSampler(model, tok, batch_size=1, **kwargs).sample([p], [s])[0] for p, s in zip(PROMPTS, seeds, strict=True)
    ]
    together = HFSampler(model, tok, batch_size=64, **kwargs).sample(PROMPTS, seeds)
    assert together == alone
    reversed_ = HFSampler(model, tok, batch_size=3, **kwargs).sample(PROMPTS[::-1], seeds[::-1])
    assert reversed_ == alone[::-1]
    # first and last in a batch of other prompts
    others = ["zz", "another prompt", "9"]
    first = HFSampler(model, tok, batch_size=8, **kwargs).sample([PROMPTS[1], *others], [seeds[1], 1, 2, 3])[0]
    last = HFSampler(model, tok, batch_size=8, **kwargs).sample([*others, PROMPTS[1]], [1, 2, 3, seeds[1]])[-1]
    assert first == last == alone[1]


def test_batch_independent_when_rows_stop_at_different_steps(tok, monkeypatch):
    # Small alphabet: rows hit EOS and the stop string at different steps, so the batch keeps
    # running finished rows. Every row must still see every step, with its own random stream.
    small = char_tokenizer("ab\n")
    model = tiny_gpt2(small, seed=3)
    calls: list[tuple[int, int]] = []
    original = sampling._SeededSampling.__call__

    def spy(self, input_ids, scores):
        calls.append((scores.shape[0], input_ids.shape[1] - self.prompt_width))
        return original(self, input_ids, scores)

    monkeypatch.setattr(sampling._SeededSampling, "__call__", spy)
    kwargs = {"num_samples": 4, "temperature": 1.0, "max_new_tokens": 25, "stop": "\nb"}
    prompts, seeds = ["ab", "b", "aab\na", "a"], [5, 6, 7, 8]
    together = HFSampler(model, small, batch_size=4, **kwargs).sample(prompts, seeds)
    assert [rows for rows, _ in calls] == [16] * len(calls)
    assert [step for _, step in calls] == list(range(len(calls)))
    lengths = {len(text) for samples in together for text in samples}
    assert len(lengths) > 1  # rows really did finish at different times
    alone = [
        HFSampler(model, small, batch_size=1, **kwargs).sample([p], [s])[0] for p, s in zip(prompts, seeds, strict=True)
    ]
    assert together == alone


def test_stop_string_cut_is_consistent_with_unstopped_stream(tok):
    # Per-row streams do not depend on stopping, so a stopped completion is the unstopped one cut
    # before the first stop occurrence. Multi-token stop on a tiny alphabet, so it occurs often.
    small = char_tokenizer("ab\n")
    model = tiny_gpt2(small, seed=1)
    # No EOS to end rows early (a tokenizer with a pad token only): rows run to the stop or the limit.
    small.eos_token = None
    model.generation_config.eos_token_id = None
    prompts, seeds = ["a", "b", "ab", "ba", "\n", "aa"], list(range(6))
    common = {"num_samples": 4, "temperature": 1.0, "max_new_tokens": 30}
    full = HFSampler(model, small, stop=None, **common).sample(prompts, seeds)
    cut = HFSampler(model, small, stop="b\na", **common).sample(prompts, seeds)
    n_cut = 0
    for full_samples, cut_samples in zip(full, cut, strict=True):
        for f, c in zip(full_samples, cut_samples, strict=True):
            assert "b\na" not in c
            assert c == f.split("b\na", 1)[0]
            n_cut += c != f
    assert n_cut >= 3


def test_stop_string_ends_generation_early(tok):
    # A stop string that is already complete stops the row after the first token (of 200).
    small = char_tokenizer("ab")
    model = tiny_gpt2(small, seed=2)
    steps: list[int] = []
    sampler = HFSampler(model, small, num_samples=2, temperature=1.0, max_new_tokens=200, stop="a")
    original = sampling._StopString.__call__

    def spy(self, input_ids, scores, **kwargs):
        steps.append(input_ids.shape[1] - self.prompt_width)
        return original(self, input_ids, scores, **kwargs)

    sampling._StopString.__call__ = spy
    try:
        out = sampler.sample(["b"] * 5, list(range(5)))
    finally:
        sampling._StopString.__call__ = original
    assert all(set(text) <= {"b"} for samples in out for text in samples)
    assert max(steps) < 200


def test_default_stop_string_with_scripted_model(tok):
    # A model that always writes "4\nDone.xyz..." (logits forced through the lm_head bias).
    script = tok("4\nDone.xyz", add_special_tokens=False)["input_ids"]
    model = tiny_gpt2(tok)
    model.transformer.wte.weight.data.zero_()
    model.transformer.wpe.weight.data.zero_()
    # Make the next token a function of the current token: embed token t as one-hot, map to next.
    vocab, dim = len(tok), model.config.n_embd
    assert vocab > dim  # not enough room for one-hot; use a hashing trick on a few tokens only
    nxt = dict(zip([tok.encode("=", add_special_tokens=False)[0], *script[:-1]], script, strict=False))
    keys = list(nxt)
    assert len(keys) <= dim
    with torch.no_grad():
        for slot, token in enumerate(keys):
            model.transformer.wte.weight[token, slot] = 1.0
        for block in model.transformer.h:  # silence the blocks: the residual stream is the embedding
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.ln_f.bias.zero_()
        head = torch.zeros(vocab, dim)
        for slot, token in enumerate(keys):
            head[nxt[token], slot] = 1000.0
        model.lm_head.weight = torch.nn.Parameter(head)
    out = HFSampler(model, tok, num_samples=2, temperature=0.8, max_new_tokens=20).sample(["2+2="], [0])
    assert out == [["4", "4"]]
    assert DEFAULT_STOP == "\nDone."


def test_temperature_zero_equals_plain_greedy_generate(model, tok):
    prompt = "What is 2+2?\nAnswer:"
    ids = tok(prompt, return_tensors="pt")
    plain = model.generate(**ids, do_sample=False, max_new_tokens=20, pad_token_id=tok.pad_token_id)
    generated = plain[0, ids["input_ids"].shape[1] :].tolist()
    if tok.eos_token_id in generated:
        generated = generated[: generated.index(tok.eos_token_id)]
    expected = tok.decode(generated, skip_special_tokens=True)
    out = HFSampler(model, tok, num_samples=3, temperature=0, max_new_tokens=20, stop=None).sample([prompt], [9])
    assert out == [[expected] * 3]


def test_left_padded_prompt_gives_same_greedy_completion(model, tok):
    # Position ids must follow the attention mask under left padding.
    greedy = HFSampler(model, tok, num_samples=1, temperature=0, max_new_tokens=20, stop=None, batch_size=8)
    short = "1+1="
    alone = greedy.sample([short], [0])
    padded = greedy.sample([short, "a much, much longer prompt that pads the short one on the left"], [0, 0])
    assert padded[0] == alone[0]


def test_max_new_tokens_bound(model, tok):
    sampler = HFSampler(model, tok, num_samples=4, temperature=1.0, max_new_tokens=7, stop=None)
    out = sampler.sample(PROMPTS, [0, 1, 2, 3])
    counts = [len(tok(text, add_special_tokens=False)["input_ids"]) for samples in out for text in samples]
    assert max(counts) <= 7
    assert 7 in counts


def test_tokenizer_unchanged_and_model_mode_restored(tok):
    model = tiny_gpt2(tok).train()
    for side in ("right", "left"):
        tok_ = char_tokenizer()
        tok_.padding_side = side
        before = (tok_.padding_side, tok_.pad_token, tok_.pad_token_id, tok_.eos_token, tok_.truncation_side)
        out = HFSampler(model, tok_, num_samples=2, temperature=1.0, max_new_tokens=5).sample(PROMPTS, [0, 1, 2, 3])
        assert (tok_.padding_side, tok_.pad_token, tok_.pad_token_id, tok_.eos_token, tok_.truncation_side) == before
        assert len(out) == len(PROMPTS)
    assert model.training and all(training_flags(model))


def test_sampler_restores_mode_when_generate_raises(tok, monkeypatch):
    model = tiny_gpt2(tok).train()

    def boom(*args, **kwargs):
        assert not model.training
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(model, "generate", boom)
    sampler = HFSampler(model, tok, num_samples=2, max_new_tokens=5)
    with pytest.raises(RuntimeError, match="simulated failure"):
        sampler.sample(["1+1="], [0])
    assert model.training and all(training_flags(model))


def test_tokenizer_without_pad_token(model, tok):
    nopad = no_pad_tokenizer()
    kwargs = {"num_samples": 2, "temperature": 1.0, "max_new_tokens": 10, "stop": None}
    out = HFSampler(model, nopad, batch_size=4, **kwargs).sample(PROMPTS, [0, 1, 2, 3])
    assert nopad.pad_token is None and nopad.pad_token_id is None
    # Same completions as with a padded tokenizer: padding is masked, its value irrelevant.
    assert out == HFSampler(model, tok, batch_size=4, **kwargs).sample(PROMPTS, [0, 1, 2, 3])


def test_tokenizer_without_pad_or_eos_is_rejected(model):
    bare = no_pad_tokenizer()
    bare.eos_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        HFSampler(model, bare)


def test_model_generation_config_is_ignored(tok):
    kwargs = {"num_samples": 2, "temperature": 1.0, "max_new_tokens": 10, "stop": None}
    plain = HFSampler(tiny_gpt2(tok), tok, **kwargs).sample(PROMPTS, [0, 1, 2, 3])
    model = tiny_gpt2(tok)
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.3
    model.generation_config.top_k = 2
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.no_repeat_ngram_size = 1
    before = model.generation_config.to_dict()
    assert HFSampler(model, tok, **kwargs).sample(PROMPTS, [0, 1, 2, 3]) == plain
    assert model.generation_config.to_dict() == before


def test_sampler_progress_and_empty(model, tok):
    seen: list[int] = []
    sampler = HFSampler(model, tok, num_samples=1, max_new_tokens=3, batch_size=3)
    sampler.sample(PROMPTS, [0, 1, 2, 3], progress=seen.append)
    assert seen == [3, 1]
    assert sampler.sample([], []) == []


def test_sampler_prompt_too_long(tok):
    model = tiny_gpt2(tok, n_positions=32)
    sampler = HFSampler(model, tok, num_samples=1, max_new_tokens=30)
    with pytest.raises(ValueError, match=r"maximum of 32.*Lower `max_new_tokens`"):
        sampler.sample(["abc"], [0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, "`num_samples` must be an int >= 1, got 0"),
        ({"temperature": -0.1}, r"`temperature` must be >= 0 .*got -0.1"),
        ({"temperature": float("nan")}, "`temperature` must be a finite number, got nan"),
        ({"top_p": 0.0}, r"`top_p` must be in \(0, 1\] .*got 0.0"),
        ({"top_p": 1.5}, r"`top_p` must be in \(0, 1\] .*got 1.5"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be an int >= 1, got 0"),
        ({"batch_size": 0}, "`batch_size` must be an int >= 1, got 0"),
        ({"stop": ""}, "`stop` must be a non-empty string or None"),
    ],
)
def test_sampler_argument_validation(model, tok, kwargs, match):
    with pytest.raises(ValueError, match=match):
        HFSampler(model, tok, **kwargs)


def test_sampler_argument_of_the_wrong_type(model, tok):
    with pytest.raises(TypeError, match=r"`num_samples` must be an int >= 1, got float 2\.0"):
        HFSampler(model, tok, num_samples=2.0)


def test_sample_argument_validation(model, tok):
    sampler = HFSampler(model, tok, num_samples=1, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"same length .* 2 prompts and 1 seeds"):
        sampler.sample(["a", "b"], [0])
    with pytest.raises(TypeError, match="sequences"):
        sampler.sample("a", [0])
    with pytest.raises(TypeError, match=r"seeds\[0\] must be an int"):
        sampler.sample(["a"], [0.5])
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a string"):
        sampler.sample(["a", 3], [0, 1])
    with pytest.raises(ValueError, match="encodes to no tokens"):
        sampler.sample([""], [0])
    with pytest.raises(TypeError, match="generate"):
        HFSampler(torch.nn.Linear(2, 2), tok)


def test_probes_leave_the_global_rng_alone(model, tok, pairs):
    state = torch.get_rng_state()
    HFSampler(model, tok, num_samples=2, temperature=1.0, max_new_tokens=5).sample(PROMPTS, [0, 1, 2, 3])
    target_perplexity(model, pairs, pad_token_id=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_completion_sampler_protocol(model, tok):
    class Constant:
        num_samples = 2

        def sample(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[list[str]]:
            return [[" 4"] * self.num_samples for _ in prompts]

    assert isinstance(HFSampler(model, tok), CompletionSampler)
    assert isinstance(Constant(), CompletionSampler)
    assert not isinstance(object(), CompletionSampler)


def test_top_p_sampling_distribution():
    # Inverse-CDF draw over the nucleus: with probs (0.5, 0.3, 0.2) and top_p=0.7 only the first
    # two tokens are eligible, renormalised to (0.625, 0.375).
    scores = torch.log(torch.tensor([[0.3, 0.5, 0.2]])).repeat(4, 1)
    u = torch.tensor([0.0, 0.6249, 0.6251, 0.999999], dtype=torch.float64)
    assert sampling._sample_top_p(scores, 1.0, 0.7, u).tolist() == [1, 1, 0, 0]
    assert sampling._sample_top_p(scores, 1.0, 1.0, u).tolist() == [1, 0, 0, 2]  # cdf (0.5, 0.8, 1)
    # Tiny top_p keeps only the most probable token; low temperature sharpens towards it.
    assert sampling._sample_top_p(scores, 1.0, 1e-6, u).tolist() == [1, 1, 1, 1]
    assert sampling._sample_top_p(scores, 0.01, 1.0, u).tolist() == [1, 1, 1, 1]
    # Empirical frequencies from the counter-based uniforms.
    key = seeds.row_key(123, 0)
    draws = torch.tensor([seeds.uniform(key, t) for t in range(20_000)], dtype=torch.float64)
    assert draws.min() >= 0 and draws.max() < 1 and abs(draws.mean().item() - 0.5) < 0.01
    tokens = sampling._sample_top_p(torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(20_000, 1), 1.0, 1.0, draws)
    freq = torch.bincount(tokens, minlength=3).double() / len(tokens)
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=0.015, rtol=0)


# --------------------------------------------------------------------------------------------
# Fast paths (see docs/performance.md)
# --------------------------------------------------------------------------------------------


def test_vectorised_uniforms_equal_the_scalar_hash():
    import numpy as np

    rng = random.Random(0)
    keys = [seeds.row_key(rng.getrandbits(64), j) for j in range(50)] + [0, 2**64 - 1]
    for step in [0, 1, 47, 2**31, 2**64 - 1]:
        got = seeds.uniforms(np.array(keys, dtype=np.uint64), step)
        assert got.dtype == np.float64
        assert got.tolist() == [seeds.uniform(key, step) for key in keys]


def test_stop_triggers_are_the_tokens_that_can_complete_the_stop(tok):
    triggers = sampling._trigger_tokens(tok, DEFAULT_STOP)
    assert triggers.shape == (len(tok),) and triggers.dtype == torch.bool
    ids = {c: tok.convert_tokens_to_ids(c) for c in ".a7\n"}
    assert triggers[ids["."]] and not triggers[ids["a"]] and not triggers[ids["7"]] and not triggers[ids["\n"]]
    assert all(triggers[[tok.pad_token_id, tok.eos_token_id, tok.bos_token_id]])  # decode to nothing
    assert sampling._trigger_tokens(tok, DEFAULT_STOP) is triggers  # cached


def test_stop_check_decodes_only_after_trigger_tokens(tok):
    decoded: list[int] = []

    class Counting:
        def batch_decode(self, ids, **kwargs):
            decoded.append(len(ids))
            return tok.batch_decode(ids, **kwargs)

    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = enc("ab")
    rows = [enc("1+1=2\nDone.xyz"), enc("3\nDone?.\nDone.")]
    triggers = sampling._trigger_tokens(tok, DEFAULT_STOP)
    criterion = sampling._StopString(
        Counting(), DEFAULT_STOP, [tok.eos_token_id], prompt_width=2, rows=2, triggers=triggers
    )
    stops = []
    for t in range(1, 15):
        input_ids = torch.tensor([prompt + row[:t] for row in rows])
        stops.append(criterion(input_ids, None).tolist())
    # Row 0 stops once "\nDone." is complete (after 11 tokens), row 1 after its second "\nDone." (14).
    assert [s[0] for s in stops] == [t >= 11 for t in range(1, 15)]
    assert [s[1] for s in stops] == [t >= 14 for t in range(1, 15)]
    # Decodes only at "." tokens of unfinished rows: row 0 at t=11, row 1 at t=8 and t=14.
    assert sum(decoded) == 3


def test_stop_check_finishes_rows_at_eos(tok):
    eos = tok.eos_token_id
    criterion = sampling._StopString(tok, DEFAULT_STOP, [eos], prompt_width=1, rows=2)
    assert criterion(torch.tensor([[5, 6], [5, eos]]), None).tolist() == [False, True]
    assert criterion(torch.tensor([[5, 6, 7], [5, eos, 0]]), None).tolist() == [False, True]


def test_perplexity_runs_the_lm_head_only_on_target_positions(model, pairs, reference, monkeypatch):
    rows_seen: list[int] = []
    head = model.get_output_embeddings()
    original = head.forward

    def spy(hidden):
        rows_seen.append(hidden.shape[0])
        assert hidden.dim() == 2  # gathered positions, not [batch, length, hidden]
        return original(hidden)

    monkeypatch.setattr(head, "forward", spy)
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("the full forward ran"))
    perplexity._SPLIT_CHECKED[model] = True  # checked before (the check runs the full forward once)
    got = target_perplexity(model, pairs, pad_token_id=0, max_batch_tokens=300)
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=0)
    assert sum(rows_seen) == sum(len(t) for _, t in pairs)  # one head row per target token, none for prompts


def test_perplexity_checks_the_split_once_and_falls_back_when_it_differs(tok, pairs):
    class Scaled(GPT2LMHeadModel):
        def forward(self, *args, **kwargs):  # logits that are more than head(last hidden state)
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2.0
            return out

    torch.manual_seed(0)
    scaled = Scaled(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=16, n_layer=1, n_head=2)).eval()
    expected = reference_perplexity(scaled, pairs)
    torch.testing.assert_close(target_perplexity(scaled, pairs, pad_token_id=0), expected, rtol=1e-4, atol=0)
    assert perplexity._SPLIT_CHECKED[scaled] is False  # from then on its own forward runs
    torch.testing.assert_close(target_perplexity(scaled, pairs, pad_token_id=0), expected, rtol=1e-4, atol=0)


def test_perplexity_skips_the_lm_head_on_unscored_positions_without_a_split(model, pairs, reference, monkeypatch):
    # a model that declares post-processed logits runs its own forward, with the LM head skipped where no row scores
    monkeypatch.setattr(model.config, "final_logit_softcapping", 30.0, raising=False)
    seen: list[tuple[int, int]] = []
    original = model.forward

    def spy(input_ids=None, logits_to_keep=0, **kwargs):
        out = original(input_ids=input_ids, logits_to_keep=logits_to_keep, **kwargs)
        seen.append((logits_to_keep, out.logits.shape[1]))
        return out

    model.forward = spy
    try:
        got = target_perplexity(model, pairs, pad_token_id=0, max_batch_tokens=300)
    finally:
        del model.forward
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=0)
    assert seen and all(keep == width for keep, width in seen)
    longest_prompt_first = [len(p) for p, _ in pairs]
    assert any(keep < max(longest_prompt_first) for keep, _ in seen)


def test_perplexity_budget_is_capped_on_cpu(model, pairs, reference, monkeypatch):
    widths: list[int] = []
    body = model.base_model
    original = body.forward

    def spy(input_ids=None, **kwargs):
        widths.append(input_ids.numel())
        return original(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(body, "forward", spy)
    # a cap of 100 tokens at this model's width (activations = padded tokens x hidden size)
    monkeypatch.setattr(perplexity, "_CPU_MAX_BATCH_ACTIVATIONS", 100 * model.config.n_embd)
    got = target_perplexity(model, pairs, pad_token_id=0, max_batch_tokens=10**9)
    longest = max(len(p) + len(t) for p, t in pairs)
    assert len(widths) > 1 and all(n <= max(100, longest) for n in widths)
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=0)
    monkeypatch.setattr(perplexity, "_CPU_MAX_BATCH_ACTIVATIONS", None)
    widths.clear()
    target_perplexity(model, pairs, pad_token_id=0, max_batch_tokens=10**9)
    assert len(widths) == 1  # uncapped: one batch
