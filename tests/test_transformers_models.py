"""attn as the attention implementation of every architecture family transformers ships, against
transformers' own "eager" attention on the same random weights (issue 17).

Per architecture (tiny configs: 2 layers, hidden 64, vocab 96; CPU, fp32): the model is either
built with attn's name or refused at construction with a message; padded-batch logits match
eager; greedy generation is token-identical with a dynamic and a static cache (generative
models); one training step's loss and gradients match eager (dropout off); and in train mode with
the config's default dropout the loss is finite or the call is refused with a message naming
dropout (no attn backend implements dropout yet, docs/design.md §2).
"""
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from attn.integrations import transformers as attn_hf  # noqa: E402

VOCAB, PROMPT, PADS, NEW_TOKENS = 96, 10, 3, 8
NAME = attn_hf.register()
# Logits and gradients against eager, both fp32 on the same weights.
TOLERANCE = 1e-4

_CAUSAL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_ENCODER = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                max_position_embeddings=64, pad_token_id=0)
_SEQ2SEQ = dict(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, pad_token_id=0, bos_token_id=1,
                eos_token_id=2, decoder_start_token_id=1)


def _causal(**changes):
    return {**_CAUSAL, **changes}


_TOKEN_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)

# name -> (model class, config class, config kwargs, kind). Kinds: "causal" (decoder LM), "masked"
# (encoder MLM), "vision" (image classifier), "clip" (text + vision towers), "seq2seq", "speech".
ARCHITECTURES = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config",
             dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, **_TOKEN_IDS), "causal"),
    "gpt_neo": ("GPTNeoForCausalLM", "GPTNeoConfig",
                dict(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4, window_size=4,
                     attention_types=[[["global", "local"], 1]], max_position_embeddings=64, **_TOKEN_IDS), "causal"),
    "gptj": ("GPTJForCausalLM", "GPTJConfig",
             dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, **_TOKEN_IDS),
             "causal"),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", _causal(num_key_value_heads=4), "causal"),
    "opt": ("OPTForCausalLM", "OPTConfig",
            dict(vocab_size=VOCAB, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
                 word_embed_proj_dim=64, max_position_embeddings=64, **_TOKEN_IDS), "causal"),
    "bloom": ("BloomForCausalLM", "BloomConfig",
              dict(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4, **_TOKEN_IDS), "causal"),
    "falcon": ("FalconForCausalLM", "FalconConfig",
               dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, **_TOKEN_IDS),
               "causal"),
    "llama": ("LlamaForCausalLM", "LlamaConfig", _causal(), "causal"),
    "mistral": ("MistralForCausalLM", "MistralConfig", _causal(sliding_window=6), "causal"),
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", _causal(num_local_experts=2, num_experts_per_tok=1), "causal"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", _causal(), "causal"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", _causal(head_dim=16), "causal"),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", _causal(head_dim=16), "causal"),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", _causal(head_dim=16, sliding_window=6), "causal"),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", _causal(head_dim=16, sliding_window=6), "causal"),
    "phi": ("PhiForCausalLM", "PhiConfig", _causal(), "causal"),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", _causal(), "causal"),
    "olmo2": ("Olmo2ForCausalLM", "Olmo2Config", _causal(), "causal"),
    "cohere": ("CohereForCausalLM", "CohereConfig", _causal(), "causal"),
    "stablelm": ("StableLmForCausalLM", "StableLmConfig", _causal(), "causal"),
    "bert": ("BertForMaskedLM", "BertConfig", _ENCODER, "masked"),
    "roberta": ("RobertaForMaskedLM", "RobertaConfig", {**_ENCODER, "pad_token_id": 1}, "masked"),
    "distilbert": ("DistilBertForMaskedLM", "DistilBertConfig",
                   dict(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=96, max_position_embeddings=64,
                        pad_token_id=0), "masked"),
    "modernbert": ("ModernBertForMaskedLM", "ModernBertConfig",
                   {**_ENCODER, "local_attention": 4, "global_attn_every_n_layers": 2, "bos_token_id": 1,
                    "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2}, "masked"),
    "vit": ("ViTForImageClassification", "ViTConfig",
            dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, image_size=16,
                 patch_size=4, num_labels=3), "vision"),
    "clip": ("CLIPModel", "CLIPConfig",
             dict(text_config=dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=96, max_position_embeddings=32, **_TOKEN_IDS),
                  vision_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=96, image_size=16, patch_size=4),
                  projection_dim=32), "clip"),
    "whisper": ("WhisperForConditionalGeneration", "WhisperConfig",
                dict(_SEQ2SEQ, num_mel_bins=8, max_source_positions=16, max_target_positions=64,
                     begin_suppress_tokens=None, suppress_tokens=None), "speech"),
    "bart": ("BartForConditionalGeneration", "BartConfig",
             dict(_SEQ2SEQ, max_position_embeddings=64, forced_eos_token_id=None), "seq2seq"),
    "t5": ("T5ForConditionalGeneration", "T5Config",
           dict(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0),
           "seq2seq"),
}

# Their attention modules compute attention in their own code, never through transformers'
# AttentionInterface: attn must refuse them at construction rather than be silently bypassed.
REFUSED = {"gpt_neo", "bloom", "falcon"}
GENERATIVE = [n for n, spec in ARCHITECTURES.items() if spec[3] in ("causal", "seq2seq", "speech")]
SERVED = [n for n in ARCHITECTURES if n not in REFUSED]


def _dropout_fields(config):
    """(config, field name, probability) of every dropout probability of ``config`` and its sub-configs."""
    return [(cfg, key, value) for cfg in [config] + [getattr(config, key) for key in config.sub_configs]
            for key, value in list(vars(cfg).items())
            if ("dropout" in key or "pdrop" in key) and isinstance(value, float)]


def _config(name, dropout: bool):
    _, config_cls, kwargs, _ = ARCHITECTURES[name]
    config = getattr(transformers, config_cls)(**copy.deepcopy(kwargs))
    if not dropout:
        for cfg, key, _ in _dropout_fields(config):
            setattr(cfg, key, 0.0)
    return config


def _build(name, implementation, dropout=False):
    model_cls = getattr(transformers, ARCHITECTURES[name][0])
    torch.manual_seed(1234)
    return model_cls._from_config(_config(name, dropout), attn_implementation=implementation)


_PAIRS = {}


def _pair(name):
    """(eager model, attn model) with identical weights, eval mode, dropout off."""
    if name not in _PAIRS:
        eager = _build(name, "eager").eval()
        ours = _build(name, NAME).eval()
        ours.load_state_dict(eager.state_dict(), strict=True)
        _PAIRS[name] = (eager, ours)
    return _PAIRS[name]


def _inputs(name, labels=False):
    """Model inputs for a batch of 2 with padding where the kind has a token mask: decoders are
    left-padded (as for generation), encoders right-padded, by PADS tokens in row 1."""
    kind = ARCHITECTURES[name][3]
    gen = torch.Generator().manual_seed(99)
    ids = torch.randint(3, VOCAB, (2, PROMPT), generator=gen)
    mask = torch.ones(2, PROMPT, dtype=torch.long)
    pads = slice(0, PADS) if kind == "causal" else slice(PROMPT - PADS, PROMPT)
    mask[1, pads] = 0
    ids[1, pads] = ARCHITECTURES[name][2].get("pad_token_id", 0)
    if kind == "vision":
        out = dict(pixel_values=torch.randn(2, 3, 16, 16, generator=gen))
        if labels:
            out["labels"] = torch.tensor([0, 2])
        return out
    if kind == "speech":
        out = dict(input_features=torch.randn(2, 8, 32, generator=gen), decoder_input_ids=ids[:, :6])
    elif kind == "clip":
        out = dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 16, 16, generator=gen))
        if labels:
            out["return_loss"] = True
        return out
    else:
        out = dict(input_ids=ids, attention_mask=mask)
    if kind == "seq2seq":
        out["decoder_input_ids"] = torch.randint(3, VOCAB, (2, 6), generator=gen)
    if labels and kind == "seq2seq":
        out["labels"] = out["decoder_input_ids"]
    elif labels:
        # Causal LMs predict token t + 1 at t: the last pad's prediction of the first real token
        # comes from a row that sees no key (see _scores), so it is not a label either.
        hidden = mask == 0 if kind == "masked" else torch.nn.functional.pad(mask, (1, 0))[:, :-1] == 0
        target = out.get("decoder_input_ids", ids)
        out["labels"] = target.masked_fill(hidden[:, :target.shape[1]], -100)
    return out


def _scores(name, output):
    """The outputs compared with eager, and the positions that count: padded queries see no key
    under attn (output 0) but an average of every key under eager, so they are left out."""
    kind = ARCHITECTURES[name][3]
    if kind == "clip":
        return output.logits_per_image
    if kind in ("causal", "masked"):
        return output.logits[_inputs(name)["attention_mask"].bool()]
    return output.logits


def _assert_close(got, want, what):
    err = (got - want).abs().max().item()
    assert err <= TOLERANCE * max(1.0, want.abs().max().item()), f"{what}: max error {err:.3g} vs eager"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_model_without_attention_interface_is_refused_at_construction(name):
    with pytest.raises(ValueError, match=f"attn_implementation='{NAME}'.*AttentionInterface"):
        _build(name, NAME)
    eager = _build(name, "eager")
    with pytest.raises(ValueError, match=f"attn_implementation='{NAME}'.*AttentionInterface"):
        eager.set_attn_implementation(NAME)
    assert eager.config._attn_implementation == "eager"


@pytest.mark.parametrize("name", SERVED)
def test_padded_logits_match_eager(name):
    eager, ours = _pair(name)
    with torch.no_grad():
        want, got = (_scores(name, model(**_inputs(name))) for model in (eager, ours))
    _assert_close(got, want, f"{name} logits")


def _generate(model, name, cache):
    inputs = _inputs(name)
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    if ARCHITECTURES[name][3] == "speech":
        return model.generate(inputs["input_features"], **kwargs)
    inputs.pop("decoder_input_ids", None)
    return model.generate(**inputs, **kwargs)


@pytest.mark.parametrize("name", [n for n in GENERATIVE if n not in REFUSED])
@pytest.mark.parametrize("cache", ["dynamic", pytest.param("static", marks=pytest.mark.slow)])
def test_greedy_generate_matches_eager(name, cache):
    eager, ours = _pair(name)
    want = _generate(eager, name, cache)
    got = _generate(ours, name, cache)
    assert torch.equal(got, want), f"{name}/{cache}: {got.tolist()} != {want.tolist()}"


@pytest.mark.slow
@pytest.mark.parametrize("name", SERVED)
def test_training_step_matches_eager(name):
    eager, ours = (model.train() for model in _pair(name))
    try:
        losses = []
        for model in (eager, ours):
            model.zero_grad()
            loss = model(**_inputs(name, labels=True)).loss
            loss.backward()
            losses.append(loss)
        _assert_close(losses[1].detach(), losses[0].detach(), f"{name} loss")
        for (param, want), got in zip(eager.named_parameters(), ours.parameters(), strict=True):
            if want.grad is not None:
                _assert_close(got.grad, want.grad, f"{name} grad of {param}")
    finally:
        eager.eval(), ours.eval()


@pytest.mark.parametrize("name", SERVED)
def test_default_dropout_in_training_runs_or_is_refused(name):
    model = _build(name, NAME, dropout=True).train()
    try:
        loss = model(**_inputs(name, labels=True)).loss
    except NotImplementedError as exc:
        assert "dropout" in str(exc) and "attn_implementation" in str(exc), str(exc)
        assert any(p > 0 for _, _, p in _dropout_fields(model.config)), f"{name} has no dropout: {exc}"
        return
    assert torch.isfinite(loss)
