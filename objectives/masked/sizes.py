"""The masked-prediction family's sizes and fixed settings: every number of ``tiny`` (tests, seconds), ``small``
(a CPU, minutes) and ``base`` (the paper's base model) of BERT, data2vec (audio, text) and MAE, apart from the
wiring (``build.py``). The Transformer sizes are the backbone's own (``backbones.transformer.SIZES``); the audio
conv encoder's are the audio adapter's (``modalities.audio.CONV_SIZES``): the tables here say what each method
sets on top."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.transformer import SIZES as TRANSFORMER

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    # BERT (Devlin et al.): base = bert-base-uncased's shape
    "bert_mlm": {size: dict(backbone=TRANSFORMER[size]) for size in TRANSFORMER},
    # data2vec audio (fairseq base_librispeech.yaml): 5 position convs of kernel 19, top 8 of 12 layers
    "data2vec_audio": {
        "tiny": dict(backbone=TRANSFORMER["tiny"], objective=dict(average_top_k_layers=2),
                     adapter=dict(num_conv_pos_embeddings=2, conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2)),
        "small": dict(backbone=TRANSFORMER["small"], objective=dict(average_top_k_layers=3),
                      adapter=dict(num_conv_pos_embeddings=5, conv_pos_kernel_size=19,
                                   num_conv_pos_embedding_groups=16)),
        "base": dict(backbone=TRANSFORMER["base"], objective=dict(average_top_k_layers=8),
                     adapter=dict(num_conv_pos_embeddings=5, conv_pos_kernel_size=19,
                                  num_conv_pos_embedding_groups=16))},
    # data2vec text (fairseq examples/data2vec/config/text/pretraining/base.yaml): top 10 of 12 layers
    "data2vec_text": {
        "tiny": dict(backbone=TRANSFORMER["tiny"], objective=dict(average_top_k_layers=2)),
        "small": dict(backbone=TRANSFORMER["small"], objective=dict(average_top_k_layers=3)),
        "base": dict(backbone=TRANSFORMER["base"], objective=dict(average_top_k_layers=10))},
    # MAE (He et al., table 1 / appendix A.1): base = ViT-B/16 on 224, decoder 8 x 512; small = a "ViT-tiny" for
    # 32 x 32 images (CIFAR) that trains on a CPU; the decoder shares activation, eps and dropout with the encoder
    "mae": {
        "tiny": dict(image=dict(image_size=32, patch_size=8),
                     backbone=dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
                     decoder=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)),
        "small": dict(image=dict(image_size=32, patch_size=4),
                      backbone=dict(hidden_size=192, num_layers=6, num_heads=3, intermediate_size=768),
                      decoder=dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512)),
        "base": dict(image=dict(image_size=224, patch_size=16), backbone=TRANSFORMER["base"],
                     decoder=dict(hidden_size=512, num_layers=8, num_heads=16, intermediate_size=2048))},
}

# data2vec text: fairseq's settings (loss, targets, EMA) and its masking (spans of 4 covering 35 %, all [MASK])
DATA2VEC_TEXT = dict(head_layers=2, target_layer_norm="layer", target_norm="none", loss_beta=4.0, loss_scale=1.0,
                     ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=300_000)
DATA2VEC_TEXT_MASK = dict(probability=0.35, span_length=4, mask_replace=1.0, random_replace=0.0)
# data2vec audio's masking (fairseq): mask_prob 0.65, mask_length 10, min_masks 1
DATA2VEC_AUDIO_MASK = dict(mask_prob=0.65, mask_length=10, min_masks=1)
# GraphMAE (Hou et al., KDD 2022; THUDM/GraphMAE configs.yml) as the MAE objective's graph options: node
# features replaced by a mask token (zeros at init) and, at replace_rate, by another node's, every node encoded,
# the encoder's output re-masked (zeroed) before a one-layer GNN decoder that outputs the features itself, scaled
# cosine error at the masked nodes; per data set the paper's mask rate, replace rate and alpha
GRAPHMAE = dict(mask_mode="replace", target="features", norm_pix_loss=False, remask="zero", loss="sce",
                decoder_embed_bias=False, prediction_head=False, mask_ratio=0.5, replace_rate=0.1, sce_alpha=2.0)
VIT_SHARED = ("activation", "layer_norm_eps", "dropout", "attention_dropout", "bias")  # MAE encoder = decoder (HF)
MAE_IMAGE = dict(positions="sincos", class_token=True)
# MAE's pre-training recipe (appendix A.1, table 8): AdamW betas (0.9, 0.95), weight decay 0.05, lr = 1.5e-4 x
# batch / 256 with a cosine schedule, 40 warmup epochs of 800 (1600 for the paper's best), random resized crops
# (scale 0.2-1) + horizontal flips, mask ratio 0.75, norm_pix_loss
MAE_TRAINING = dict(base_learning_rate=1.5e-4, base_batch_size=256, adam_beta1=0.9, adam_beta2=0.95,
                    weight_decay=0.05, warmup_epochs=40, epochs=800, crop_scale=(0.2, 1.0))


def mae_learning_rate(batch_size: int, base_learning_rate: float = MAE_TRAINING["base_learning_rate"]) -> float:
    """MAE's linear scaling rule: ``base_learning_rate x batch_size / 256`` (the global batch)."""
    return base_learning_rate * batch_size / MAE_TRAINING["base_batch_size"]


def size_of(family: str, size: str) -> dict[str, dict[str, Any]]:
    """The numbers of one size of one method of the family (a copy)."""
    if family not in SIZES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(SIZES)}")
    if size not in SIZES[family]:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES[family])}")
    return {k: dict(v) for k, v in SIZES[family][size].items()}


__all__ = ["SIZES", "GRAPHMAE", "DATA2VEC_TEXT", "DATA2VEC_TEXT_MASK", "DATA2VEC_AUDIO_MASK", "VIT_SHARED", "MAE_IMAGE",
           "MAE_TRAINING", "mae_learning_rate", "size_of"]
