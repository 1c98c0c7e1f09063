"""Chat prompts rendered from the GGUF's template equal the ones Hugging Face's code gives."""
from __future__ import annotations

import pytest

from conftest import read_jsonl
from llamafile.chat import ChatTemplateError, render_chat


def _template(model):
    return model.gguf.get("tokenizer.chat_template")


@pytest.mark.parametrize("record", read_jsonl("chat_smollm2.jsonl"), ids=lambda r: r["messages"][-1]["content"][:30])
def test_smollm2_prompt_and_ids(smollm2, record):
    tok = smollm2.tokenizer
    prompt = render_chat(_template(smollm2), record["messages"], bos_token=tok.token_text(tok.bos_id),
                         eos_token=tok.token_text(tok.eos_id))
    assert prompt == record["prompt"]
    assert smollm2.tokenize(prompt, add_special=True, parse_special=True) == record["prompt_ids"]


@pytest.mark.parametrize("record", read_jsonl("chat_qwen05.jsonl"), ids=lambda r: r["messages"][-1]["content"][:30])
def test_qwen05_prompt_and_ids(record):
    from conftest import loaded_model
    qwen = loaded_model("qwen05")
    tok = qwen.tokenizer
    prompt = render_chat(_template(qwen), record["messages"], bos_token=tok.token_text(tok.bos_id),
                         eos_token=tok.token_text(tok.eos_id))
    assert prompt == record["prompt"]
    assert qwen.tokenize(prompt, add_special=True, parse_special=True) == record["prompt_ids"]


def test_chatml_fallback_and_errors():
    prompt = render_chat(None, [{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ChatTemplateError, match="nope"):
        render_chat("{{ raise_exception('nope') }}", [])
    with pytest.raises(ChatTemplateError):
        render_chat("{% for %}", [])


def test_template_is_sandboxed():
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages.__class__.__mro__[1].__subclasses__() }}", [])


@pytest.mark.parametrize("record", read_jsonl("chat_smollm2.jsonl"), ids=lambda r: r["messages"][-1]["content"][:30])
def test_smollm2_greedy_chat_reply(smollm2, record):
    """A ChatSession turn (template, cache, streaming) gives llama.cpp's greedy reply."""
    from llamafile.chat import ChatSession
    from llamafile.sampling import Sampler

    messages = record["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    session = ChatSession(smollm2, Sampler(temperature=0.0), system=system, max_reply=len(record["ids"]))
    session.messages.extend(messages[1 if system else 0 : -1])
    reply = "".join(session.reply(messages[-1]["content"]))
    cut = next((k for k, m in enumerate(record["margins"]) if m < 0.5), len(record["ids"]))
    expected = smollm2.detokenize(record["ids"][:cut])
    assert reply.startswith(expected), (reply, expected)
    assert session.messages[-1] == {"role": "assistant", "content": reply}


def _margin_cut(record, tau=0.5) -> int:
    return next((k for k, m in enumerate(record["margins"]) if m < tau), len(record["ids"]))


# (a conversation whose first reply token is a near tie has nothing to compare, and is left out)
@pytest.mark.parametrize("record", [r for r in read_jsonl("chat_qwen05.jsonl") if _margin_cut(r) > 0],
                         ids=lambda r: r["messages"][-1]["content"][:30])
def test_qwen05_greedy_chat_reply(record):
    """Qwen2.5-Coder (qwen2 architecture, biases, Q4_K_M through the kernels): llama.cpp's
    greedy reply up to the first step whose margin is below 0.5."""
    from conftest import loaded_model
    qwen = loaded_model("qwen05")
    cut = _margin_cut(record)
    ours = list(qwen.generate(record["prompt_ids"], max_tokens=cut, temperature=0.0))
    assert ours == record["ids"][:cut]
