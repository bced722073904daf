"""Every objective family with state, trained through the engine (``selfsup.train.Trainer``) in float64: four AdamW
steps on fixed global batches of 8, checkpointed at step 2, then a second run resumed from that checkpoint to step
4. Under two processes the objective is sharded with FSDP2 (``--fsdp``: Accelerate's FSDP path, switched on for the
CPU by ``selfsup.sharding``); under one it trains plainly. Rank 0 writes, per family, both runs' whole weights
(gathered from the shards), the losses, and what shows the run was sharded (``tests/test_fsdp.py`` compares).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_worker.py OUT [LAYOUT [FAMILY ...]]
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import nn

from selfsup.data import make_train_loader
from selfsup.sharding import is_sharded
from selfsup.train import Trainer, TrainingSettings, make_accelerator

GLOBAL_BATCH, STEPS, VOCAB = 8, 4, 64


def no_dropout(obj: nn.Module) -> nn.Module:
    """Dropout and layer drop off everywhere: each process draws its own, which would make 2 processes differ
    from 1 for reasons that are not the sharding's."""
    for m in obj.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if isinstance(getattr(m, name, None), float):
                setattr(m, name, 0.0)
        cfg = getattr(m, "config", None)
        for name in ("dropout", "attention_dropout", "activation_dropout", "layerdrop", "feat_proj_dropout"):
            if isinstance(getattr(cfg, name, None), float):
                try:
                    setattr(cfg, name, 0.0)
                except Exception:  # noqa: BLE001 - a frozen config keeps its value; the module's own is zeroed
                    pass
    return obj


def stack(examples: list[dict]) -> dict:
    """Collate: tensors stacked, a list of views collated view by view."""
    out: dict[str, Any] = {}
    for key in examples[0]:
        if key == "views":
            out[key] = [stack([e[key][v] for e in examples]) for v in range(len(examples[0][key]))]
        else:
            out[key] = torch.stack([e[key] for e in examples])
    return out


def seeded(rows: list[dict]) -> list[dict]:
    return [{**r, "example_seeds": torch.tensor(1000 + i)} for i, r in enumerate(rows)]


def text_rows(n: int, length: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return seeded([{"input_ids": torch.randint(5, VOCAB, (length,), generator=g)} for _ in range(n)])


def image_rows(n: int, size: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(4)
    return seeded([{"pixel_values": torch.randn(3, size, size, generator=g, dtype=torch.float64)} for _ in range(n)])


def view_rows(n: int, local: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(5)
    rows = []
    for _ in range(n):
        views = [{"pixel_values": torch.randn(3, 16, 16, generator=g, dtype=torch.float64)} for _ in range(2)]
        views += [{"pixel_values": torch.randn(3, 8, 8, generator=g, dtype=torch.float64)} for _ in range(local)]
        rows.append({"views": views})
    return seeded(rows)


def pair_rows(n: int, siglip: bool) -> list[dict]:
    g = torch.Generator().manual_seed(6)
    rows = []
    for _ in range(n):
        k = int(torch.randint(3, 9, (1,), generator=g))
        ids = torch.ones(16 if siglip else 9, dtype=torch.long)
        ids[0], ids[1:k - 1] = 0, torch.randint(2, VOCAB, (k - 2,), generator=g)
        row = {"pixel_values": torch.randn(3, 32, 32, generator=g, dtype=torch.float64), "input_ids": ids}
        if not siglip:
            row["attention_mask"] = (torch.arange(len(ids)) < k).long()
        rows.append(row)
    return seeded(rows)


def audio_rows(n: int, clusters: int = 0, frames: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    rows = []
    for _ in range(n):
        row = {"input_values": torch.randn(4000, generator=g, dtype=torch.float64),
               "attention_mask": torch.ones(4000, dtype=torch.long)}
        if clusters:
            row["cluster_labels"] = torch.randint(0, clusters, (frames,), generator=g)
        rows.append(row)
    return seeded(rows)


def families() -> dict[str, Callable[[], tuple[nn.Module, list[dict]]]]:
    """name -> () -> (objective in float64, the training examples)."""
    from selfsup.recipes.builders.autoregressive import gpt
    from selfsup.recipes.builders.clustering import hubert
    from selfsup.recipes.builders.image_text import clip
    from selfsup.recipes.builders.masked import bert_mlm, data2vec_text, mae
    from selfsup.recipes.builders.speech_quantised import wav2vec2
    from selfsup.recipes.builders.two_view import two_view

    def two(method: str, local: int = 0, backbone: str = "vit"):   # a ViT: float64 convolutions are slow on CPU
        return lambda: (two_view(method, backbone, size="tiny", image_size=16, max_steps=10),
                        view_rows(GLOBAL_BATCH, local))

    def hubert_case():
        obj = hubert("tiny", num_clusters=8)
        return obj, audio_rows(GLOBAL_BATCH, 8, int(obj.adapter.feature_lengths(4000)))

    return {
        "clip": lambda: (clip("tiny", "clip", "vit", vocab_size=VOCAB), pair_rows(GLOBAL_BATCH, False)),
        "siglip": lambda: (clip("tiny", "siglip", "vit", vocab_size=VOCAB), pair_rows(GLOBAL_BATCH, True)),
        "simclr": two("simclr"),
        "moco": two("moco_v2"),
        "byol": two("byol", backbone="resnet_tiny"),   # ResNet stages as units, global batch norm
        "dino": two("dino", local=2),
        "swav": two("swav", local=2),
        "wav2vec2": lambda: (wav2vec2("tiny"), audio_rows(GLOBAL_BATCH)),
        "hubert": hubert_case,
        "data2vec": lambda: (data2vec_text("tiny", VOCAB, 4, 0), text_rows(GLOBAL_BATCH)),
        "mae": lambda: (mae("tiny", image={"image_size": 16, "patch_size": 4}), image_rows(GLOBAL_BATCH)),
        "mlm": lambda: (bert_mlm("tiny", VOCAB, mask_token_id=4), text_rows(GLOBAL_BATCH)),
        "gpt": lambda: (gpt("tiny", VOCAB, max_positions=32), text_rows(GLOBAL_BATCH)),
    }


def train(name: str, build: Callable, root: Path, layout: str, world: int, resume: str | None) -> dict[str, Any]:
    settings = TrainingSettings(output_dir=str(root / name), report_to="none", mixed_precision="no",
                                max_steps=STEPS, per_device_train_batch_size=GLOBAL_BATCH // world,
                                learning_rate=1e-3, warmup_steps=0, lr_scheduler_type="constant", max_grad_norm=1.0,
                                checkpointing_steps=2, checkpoints_total_limit=3, fsdp=world > 1,
                                fsdp_checkpoint=layout, resume_from_checkpoint=resume)
    accelerator = make_accelerator(settings)   # one per run: Accelerate's FSDP clipping looks among its models
    torch.manual_seed(0)
    objective, rows = build()
    objective = no_dropout(objective.double())
    loader = make_train_loader(rows, stack, settings.per_device_train_batch_size, world, accelerator.process_index,
                               seed=0)
    trainer = Trainer(objective, loader, settings, accelerator)
    trainer.train()
    teacher = [p for n, p in trainer.objective.named_parameters() if n.startswith("teacher")]
    facts = {"sharded": is_sharded(trainer.objective),
             "units": sum(1 for m in trainer.objective.modules() if type(m).__name__.startswith("FSDP")),
             "teacher_sharded": bool(teacher) and all(type(p).__name__ == "DTensor" and p.placements[0].is_shard()
                                                      for p in teacher)}
    plain = trainer.trained_objective()
    weights = {k: v.detach().clone() for k, v in plain.state_dict().items()} if plain is not None else {}
    return {"weights": weights, "losses": list(trainer.history), "facts": facts}


def run_all(layout: str, names: list[str]) -> dict[str, torch.Tensor]:
    settings = TrainingSettings(report_to="none", mixed_precision="no", fsdp=True)
    accelerator = make_accelerator(settings)
    out: dict[str, torch.Tensor] = {}
    cases = families()
    root = [tempfile.mkdtemp() if accelerator.is_main_process else ""]
    if accelerator.num_processes > 1:          # every process writes into the main process's folder
        torch.distributed.broadcast_object_list(root, src=0)
    root = Path(root[0])
    try:
        for name in names or list(cases):
            straight = train(name, cases[name], root, layout, accelerator.num_processes, None)
            resumed = train(f"{name}_resumed", cases[name], root, layout, accelerator.num_processes,
                            str(root / name / "checkpoint-2"))
            if accelerator.is_main_process:
                for tag, run in (("straight", straight), ("resumed", resumed)):
                    for k, v in run["weights"].items():
                        out[f"{name}/{tag}/{k}"] = v.contiguous()
                    out[f"{name}/{tag}/__losses"] = torch.tensor(run["losses"], dtype=torch.float64)
                for k, v in straight["facts"].items():
                    out[f"{name}/__{k}"] = torch.tensor([int(v)])
            accelerator.wait_for_everyone()
    finally:
        if accelerator.is_main_process:
            shutil.rmtree(root, ignore_errors=True)
    out["__world_size"] = torch.tensor([accelerator.num_processes])
    return out


if __name__ == "__main__":
    result = run_all(sys.argv[2] if len(sys.argv) > 2 else "sharded", sys.argv[3:])
    if int(result["__world_size"]) == 1 or torch.distributed.get_rank() == 0:
        save_file(result, sys.argv[1])
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
