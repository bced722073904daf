import pytest
import torch
import torch.nn.functional as F

from selfsup.recipes.builders.masked import bert_mlm
from selfsup.objectives.masked.hf_bert import to_transformers
from selfsup.objectives.masked.mlm import IGNORE_INDEX, MaskedLanguageModeling, mask_tokens

SPECIAL = [0, 1, 2, 3, 4]


def make(vocab: int = 1000, **kw) -> MaskedLanguageModeling:
    torch.manual_seed(0)
    return bert_mlm("tiny", vocab, mask_token_id=4, special_token_ids=SPECIAL, dropout=0.0, attention_dropout=0.0,
                    **kw).eval()


def test_masking_follows_bert_80_10_10():
    ids = torch.randint(5, 1000, (200, 128))
    ids[:, 0] = 2
    special = ids < 5
    g = torch.Generator().manual_seed(1)
    corrupted, labels = mask_tokens(ids, 4, 1000, 0.15, special=special, generator=g)
    selected = labels != IGNORE_INDEX
    assert abs(selected.float().mean().item() - 0.15 * 127 / 128) < 0.005
    assert not selected[:, 0].any(), "special tokens are never selected"
    assert torch.equal(labels[selected], ids[selected])
    as_mask = (corrupted == 4) & selected
    unchanged = (corrupted == ids) & selected
    n = selected.sum().item()
    assert abs(as_mask.sum().item() / n - 0.8) < 0.01
    assert abs(unchanged.sum().item() / n - 0.1) < 0.01  # 10 % kept (+ a few random draws of the same id)
    assert torch.equal(corrupted[~selected], ids[~selected])


def test_whole_word_masking_masks_every_piece_of_a_word():
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (50, 64))
    word_start = torch.rand(50, 64) < 0.5
    word_start[:, 0] = True
    _, labels = mask_tokens(ids, 4, 100, 0.3, word_start=word_start)
    selected = labels != IGNORE_INDEX
    # a continuation piece is selected exactly when the piece before it is
    cont = ~word_start
    assert torch.equal(selected[:, 1:][cont[:, 1:]], selected[:, :-1][cont[:, 1:]])
    assert 0.2 < selected.float().mean() < 0.4


def test_objective_whole_word_uses_continuation_table():
    obj = make(vocab=50, continuation_ids=list(range(25, 50)), mlm_probability=0.5)
    ids = torch.tensor([[10, 30, 31, 11, 32, 12] * 20])
    _, labels = obj.corrupt(ids)
    sel = (labels != IGNORE_INDEX)[0].view(-1, 6)
    assert torch.equal(sel[:, 1], sel[:, 0]) and torch.equal(sel[:, 2], sel[:, 0])
    assert torch.equal(sel[:, 4], sel[:, 3])


def batch_with_padding(obj):
    ids = torch.randint(5, 1000, (4, 24))
    attention = torch.ones_like(ids)
    attention[1, 15:] = 0
    attention[3, 5:] = 0
    ids[attention == 0] = 0
    inputs, labels = obj.corrupt(ids, generator=torch.Generator().manual_seed(0))
    return inputs, labels, attention


def test_loss_and_logits_equal_transformers_bert():
    obj = make()
    for p in obj.parameters():  # move away from the init so that every weight matters
        p.data.add_(torch.randn_like(p) * 0.02)
    hf = to_transformers(obj)
    inputs, labels, attention = batch_with_padding(obj)
    assert (labels != IGNORE_INDEX).sum() > 5
    out = obj({"input_ids": inputs, "labels": labels, "attention_mask": attention})
    ref = hf(input_ids=inputs, attention_mask=attention, labels=labels)
    assert torch.allclose(out.loss / out.num_targets, ref.loss, atol=1e-5, rtol=0)
    logits = obj.logits({"input_ids": inputs, "attention_mask": attention})
    real = attention.bool()
    assert torch.allclose(logits[real], ref.logits[real], atol=1e-5, rtol=0)
    # gradients agree as well
    (out.loss / out.num_targets).backward()
    ref.loss.backward()
    ours = obj.backbone.layers[0].fc1.weight.grad
    theirs = hf.bert.encoder.layer[0].intermediate.dense.weight.grad
    assert torch.allclose(ours, theirs, atol=1e-6)
    emb_ours, emb_ref = obj.adapter.word_embeddings.weight.grad, hf.bert.embeddings.word_embeddings.weight.grad
    assert torch.allclose(emb_ours, emb_ref, atol=1e-6)


def test_head_runs_only_at_masked_positions():
    obj = make()
    inputs, labels, attention = batch_with_padding(obj)
    seen = []
    obj.head.dense.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    out = obj({"input_ids": inputs, "labels": labels, "attention_mask": attention})
    assert seen == [int((labels != IGNORE_INDEX).sum())] == [out.num_targets]
    full = obj.logits({"input_ids": inputs, "attention_mask": attention})
    where = labels != IGNORE_INDEX
    assert torch.allclose(out.loss, F.cross_entropy(full[where], labels[where], reduction="sum"), atol=1e-4)


def test_objective_masks_itself_without_labels():
    obj = make().train()
    torch.manual_seed(3)
    out = obj({"input_ids": torch.randint(5, 1000, (4, 64))})
    assert 10 < out.num_targets < 80 and torch.isfinite(out.loss)
    assert 0.0 <= float(out.metrics["mlm_accuracy"]) <= 1.0


def test_bf16_loss_is_close_to_fp32():
    obj = make()
    inputs, labels, attention = batch_with_padding(obj)
    batch = {"input_ids": inputs, "labels": labels, "attention_mask": attention}
    with torch.no_grad():
        fp32 = obj(batch).loss
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = obj(batch).loss
    assert bf16.dtype == torch.float32 and abs(float(bf16 - fp32)) / float(fp32) < 0.02


@pytest.mark.parametrize("bad", ["norm_first", "causal"])
def test_export_refuses_what_bert_cannot_hold(bad):
    from selfsup.errors import SelfsupError

    obj = bert_mlm("tiny", 100, 4, **{bad: True})
    with pytest.raises(SelfsupError):
        to_transformers(obj)


def test_recipe_size_flags_override_the_preset():
    import pytest

    from selfsup.recipes import bert_mlm
    from selfsup.errors import SelfsupError

    args = bert_mlm.build_parser().parse_args(["--model_size", "tiny", "--hidden_size", "128", "--num_layers", "3"])
    assert bert_mlm.size_overrides(args, "bert_mlm") == {"hidden_size": 128, "intermediate_size": 512, "num_heads": 2,
                                             "num_layers": 3}
    args = bert_mlm.build_parser().parse_args(["--model_size", "tiny", "--num_heads", "3"])
    with pytest.raises(SelfsupError, match="not a multiple"):
        bert_mlm.size_overrides(args, "bert_mlm")
