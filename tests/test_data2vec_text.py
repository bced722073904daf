"""data2vec text: parity of the student with transformers' Data2VecTextModel, targets and loss against a plain
reference of fairseq's formulas, fairseq's span masking, the export round trip, and the EMA teacher."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.errors import SelfsupError
from selfsup.recipes.builders.masked import data2vec_text as build
from selfsup.objectives.masked.hf_data2vec_text import data2vec_text_config, from_transformers, to_transformers
from selfsup.objectives.masking import IGNORE_INDEX

transformers = pytest.importorskip("transformers")

VOCAB, CLS, PAD, SEP, MASK = 50, 0, 1, 2, 49        # RoBERTa's <s>, <pad>, </s>; [MASK] last
MAX_POSITIONS = 16
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0}


def make(seed: int = 0, backbone: dict | None = None, **kw):
    """A tiny data2vec text objective without dropout, every weight (the teacher's independently) moved off its
    init so that teacher and student differ and every weight matters; eval mode."""
    torch.manual_seed(seed)
    obj = build("tiny", vocab_size=VOCAB, mask_token_id=MASK, pad_token_id=PAD, special_token_ids=(CLS, SEP),
                max_positions=MAX_POSITIONS, backbone={**NO_DROPOUT, **(backbone or {})}, **kw)
    with torch.no_grad():
        for p in obj.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return obj.eval()


def padded_batch(seed: int = 0):
    """Three rows <s> w ... </s>: one of the full MAX_POSITIONS, two right-padded with the pad id; a fixed mask
    on real words (plus one padded position, which must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [MAX_POSITIONS, 9, 5]
    ids = torch.full((3, MAX_POSITIONS), PAD)
    attention = torch.zeros(3, MAX_POSITIONS, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(3, MASK, (n,), generator=g)
        ids[b, 0], ids[b, n - 1] = CLS, SEP
        attention[b, :n] = 1
    mask = torch.zeros(3, MAX_POSITIONS, dtype=torch.bool)
    mask[0, [2, 3, 4, 5, 11]] = True
    mask[1, [1, 6, 7]] = True
    mask[2, [2]] = True
    mask[2, 8] = True  # padded: not a target
    return {"input_ids": ids, "attention_mask": attention, "mask_time_indices": mask}


def twin_with(adapter_state, backbone_state):
    """A fresh objective of the same shape holding the given adapter and backbone weights."""
    twin = make()
    twin.adapter.load_state_dict(adapter_state)
    twin.backbone.load_state_dict(backbone_state)
    return twin


# -- (a) parity of the student with transformers --------------------------------------------------------------
def test_student_equals_data2vec_text_model():
    obj = make()
    hf = to_transformers(obj)
    assert type(hf).__name__ == "Data2VecTextModel" and not hf.training
    assert hf.config.max_position_embeddings == MAX_POSITIONS + PAD + 1 and hf.config.type_vocab_size == 1
    batch = padded_batch()
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ours, padding = obj.encoder()(batch, output_hidden_states=True)
        ref = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    assert torch.equal(padding, ~real)
    assert len(ours.hidden_states) == len(ref.hidden_states) == obj.backbone.config.num_layers + 1
    for i, (h, r) in enumerate(zip(ours.hidden_states, ref.hidden_states)):
        assert (h - r)[real].abs().max() <= 1e-5, f"hidden state {i}"
    assert (ours.last_hidden_state - ref.last_hidden_state)[real].abs().max() <= 1e-5


# -- (b) targets and loss against fairseq's formulas ----------------------------------------------------------
def hf_layers(model, ids, attention):
    """(last hidden state, each layer's FFN output before dropout and the last residual) of a Data2VecTextModel."""
    outs = []
    handles = [layer.output.dense.register_forward_hook(lambda _m, _i, out: outs.append(out))
               for layer in model.encoder.layer]
    try:
        with torch.no_grad():
            last = model(input_ids=ids, attention_mask=attention).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    return last, outs


def reference_loss(obj, batch):
    """fairseq's data2vec_text.py written out: targets from the teacher on the unmasked ids (top K FFN outputs,
    each layer-normed without affine parameters, averaged), the student on the [MASK]ed ids, the two-layer
    regression head, smooth L1 (beta 4) summed over D, times 1, summed over the masked tokens."""
    c = obj.config
    assert (c.average_top_k_layers, c.loss_beta, c.loss_scale, c.target_layer_norm, c.target_norm) == (
        2, 4.0, 1.0, "layer", "none")
    ids, attention = batch["input_ids"], batch["attention_mask"]
    masked = batch["mask_time_indices"] & attention.bool()
    teacher = to_transformers(twin_with(obj.teacher.adapter.state_dict(), obj.teacher.backbone.state_dict()))
    _, fc = hf_layers(teacher, ids, attention)
    ys = []
    for h in fc[-c.average_top_k_layers:]:
        mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        ys.append((h - mean) / torch.sqrt(var + 1e-5))
    y = (sum(ys) / len(ys))[masked]
    student = to_transformers(obj)
    x, _ = hf_layers(student, ids.masked_fill(masked, MASK), attention)
    first, _, second = obj.regression_head
    assert first.out_features == 2 * first.in_features == 2 * second.out_features
    with torch.no_grad():
        pred = F.linear(F.gelu(F.linear(x[masked], first.weight, first.bias)), second.weight, second.bias)
        d = (pred - y).abs()
        per_dim = torch.where(d < 4.0, 0.5 * d ** 2 / 4.0, d - 0.5 * 4.0)
        return per_dim.sum(-1).sum() * 1.0, y, int(masked.sum())


def test_targets_and_loss_equal_fairseqs_formulas():
    obj = make()
    batch = padded_batch()
    ref_loss, ref_y, count = reference_loss(obj, batch)
    with torch.no_grad():
        tokens, mask = obj.masked_tokens(batch)
        assert torch.equal(mask, batch["mask_time_indices"] & batch["attention_mask"].bool())
        y = obj.targets(batch, tokens)
        out = obj(batch)
    assert (y[mask] - ref_y).abs().max() <= 1e-5
    assert int(out.num_targets) == count == 9
    assert abs(float(out.loss) - float(ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss)))
    assert float(ref_loss) > 0


def test_the_teacher_reads_the_unmasked_ids():
    """Targets do not depend on the mask (the teacher embeds the clean ids itself), the prediction does."""
    obj = make()
    batch = padded_batch()
    other = {**batch, "mask_time_indices": torch.zeros_like(batch["mask_time_indices"])}
    with torch.no_grad():
        y1 = obj.targets(batch, obj.masked_tokens(batch)[0])
        y2 = obj.targets(other, obj.masked_tokens(other)[0])
    real = batch["attention_mask"].bool()
    assert torch.equal(y1[real], y2[real])


# -- (c) the masker -------------------------------------------------------------------------------------------
def fairseq_share(lengths, p: float = 0.35, span: int = 4, seed: int = 0) -> float:
    """fairseq's MaskTokensDataset (mask_multiple_length) on blocks of n tokens: the masked share."""
    rng = np.random.default_rng(seed)
    masked = total = 0
    for n in lengths:
        num = int(p * n / float(span) + rng.random())
        idc = rng.choice(n, num, replace=False)
        idc = np.concatenate([idc + i for i in range(span)])
        m = np.zeros(n, dtype=bool)
        m[idc[idc < n]] = True
        masked, total = masked + m.sum(), total + n
    return masked / total


def test_masker_defaults_follow_fairseq():
    obj = make()
    g = torch.Generator().manual_seed(0)
    rows, width = 3000, 64
    lengths = torch.randint(12, width + 1, (rows,), generator=g)
    ids = torch.randint(3, MASK, (rows, width), generator=g)
    pos = torch.arange(width)[None]
    ids[pos >= lengths[:, None]] = PAD
    ids[:, 0] = CLS
    ids[torch.arange(rows), lengths - 1] = SEP
    corrupted, labels = obj.masker(ids, g)
    masked = labels != IGNORE_INDEX
    special = (ids == CLS) | (ids == SEP) | (ids == PAD)
    assert not masked[special].any() and torch.equal(corrupted[special], ids[special])
    assert (corrupted[masked] == MASK).all() and torch.equal(labels[masked], ids[masked])
    assert torch.equal(corrupted[~masked], ids[~masked])
    share = masked.sum().item() / (~special).sum().item()
    assert 0.25 <= share <= 0.36
    reference = fairseq_share((lengths - 2).tolist())
    assert abs(share - reference) <= 0.01, (share, reference)
    # runs are unions of spans of 4: shorter only where clipped by the closing </s>
    for row, n in zip(masked[:200].tolist(), (lengths[:200] - 1).tolist()):
        run = 0
        for j, m in enumerate(row[:n + 1]):
            if m:
                run += 1
            else:
                assert run == 0 or run >= 4 or j == n, (row, n)
                run = 0


# -- (d) export round trip ------------------------------------------------------------------------------------
def test_export_round_trip(tmp_path):
    obj = make()
    batch = padded_batch()
    real = batch["attention_mask"].bool()
    to_transformers(obj).save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Data2VecTextModel"
    with torch.no_grad():
        ours = obj.encoder()(batch)[0].last_hidden_state
        theirs = loaded.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert (ours - theirs)[real].abs().max() <= 1e-4

    back = from_transformers(tmp_path, mask_token_id=MASK)
    for part in ("adapter", "backbone"):
        mine, theirs = getattr(obj, part).state_dict(), getattr(back, part).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), part
        taught = getattr(back.teacher, part).state_dict()
        assert all(torch.equal(theirs[k], taught[k]) for k in theirs), f"teacher {part}"
    assert back.config == obj.config and back.masker.to_dict() == obj.masker.to_dict()
    assert back.backbone.config == obj.backbone.config
    assert back.adapter.max_positions == MAX_POSITIONS
    assert not any(p.requires_grad for p in back.teacher.parameters())
    # from a model object, with overrides; a fresh HF config gets fairseq's defaults
    again = from_transformers(loaded, mask_token_id=MASK, probability=0.2, average_top_k_layers=1)
    assert again.masker.probability == 0.2 and again.config.average_top_k_layers == 1
    plain = transformers.Data2VecTextModel(transformers.Data2VecTextConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=20, type_vocab_size=1, pad_token_id=PAD))
    fresh = from_transformers(plain, mask_token_id=MASK, special_token_ids=(CLS, SEP), dropout=0.0)
    assert fresh.config.average_top_k_layers == 3 and fresh.config.loss_beta == 4.0
    assert fresh.masker.span_length == 4 and set(fresh.masker.special_ids) == {CLS, PAD, SEP}
    assert fresh.adapter.max_positions == 20 - PAD - 1 and fresh.backbone.config.dropout == 0.0
    assert torch.equal(fresh.adapter.word_embeddings.weight, plain.embeddings.word_embeddings.weight)
    mlm = transformers.Data2VecTextForMaskedLM(plain.config)  # a head model: base weights under data2vec_text.
    from_mlm = from_transformers(mlm, mask_token_id=MASK)
    assert torch.equal(from_mlm.backbone.layers[2].fc2.weight, mlm.data2vec_text.encoder.layer[2].output.dense.weight)


def test_clear_errors(tmp_path):
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(SelfsupError, match="model type 'bert'"):
        from_transformers(tmp_path / "bert", mask_token_id=MASK)
    with pytest.raises(SelfsupError, match="expected a Data2VecTextModel"):
        from_transformers(bert, mask_token_id=MASK)
    with pytest.raises(SelfsupError, match="not a transformers checkpoint"):
        from_transformers(tmp_path / "nothing", mask_token_id=MASK)
    two_types = transformers.Data2VecTextModel(transformers.Data2VecTextConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        type_vocab_size=2))
    with pytest.raises(SelfsupError, match="type_vocab_size 2"):
        from_transformers(two_types, mask_token_id=MASK)
    with pytest.raises(SelfsupError, match="unknown data2vec settings"):
        from_transformers(to_transformers(make()), mask_token_id=MASK, no_such_setting=1)
    with pytest.raises(SelfsupError, match="outside the vocabulary"):
        from_transformers(to_transformers(make()), mask_token_id=VOCAB)
    for change in ({"norm_first": True, "final_norm": True}, {"causal": True}, {"final_norm": True}):
        with pytest.raises(SelfsupError, match="Data2VecTextModel"):
            data2vec_text_config(make(backbone=change))


# -- (e) the teacher ------------------------------------------------------------------------------------------
def test_teacher_averages_the_layers_and_copies_the_embeddings():
    obj = make(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10)
    assert make().momentum(1) == pytest.approx(0.999 + (0.9999 - 0.999) / 300_000, abs=1e-12)
    with torch.no_grad():
        for p in obj.encoder().parameters():
            p.add_(torch.randn_like(p) * 0.1)  # a changed student
    before = {k: v.clone() for k, v in obj.teacher.state_dict().items()}
    student = {k: v.clone() for k, v in obj.encoder().state_dict().items()}
    obj.on_step_end(1)
    m = 0.9 + (0.99 - 0.9) * 1 / 10
    assert obj.momentum(1) == pytest.approx(m) and float(obj.ema_decay) == pytest.approx(m)
    after = obj.teacher.state_dict()
    layers = [k for k in after if k.startswith("backbone.")]
    embeddings = [k for k in after if k.startswith("adapter.")]
    assert layers and embeddings
    assert {k.split(".")[1] for k in embeddings} == {"word_embeddings", "position_embeddings",
                                                      "token_type_embeddings", "norm"}
    for k in embeddings:
        assert torch.equal(after[k], student[k]), k
    for k in layers:
        assert not torch.equal(after[k], student[k]) and not torch.equal(after[k], before[k]), k
        assert torch.allclose(after[k], m * before[k] + (1 - m) * student[k], atol=1e-6), k
    assert not any(p.requires_grad for p in obj.teacher.parameters())
