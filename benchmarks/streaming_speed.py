"""Streaming loader speed against the training step it feeds, for text (BERT MLM) and images (MAE).

The data are local shard files written here first: images, the first ``--images`` CIFAR-10 training images of
``../shared/data/images/cifar10/train.parquet`` (PNG bytes, 32 x 32) split into ``--shards`` parquet files
(random 32 x 32 PNGs when that file is absent); text, CPython's ``pydoc_data.topics`` paragraphs repeated into
``--shards`` ``.txt`` files. The loaders are the ones ``--streaming`` gives the recipes
(``recipes/_image.view_loader``: decode + MAE's crop-and-flip; ``recipes/_text.text_blocks``: tokenize + pack into
128-token blocks), on one process, ``num_workers=0``. Two figures per modality, in samples/s:

* loader: batches drawn from the loader alone (``--batches`` of them after one warm-up batch);
* train step: forward + backward + AdamW on already-loaded batches of the tiny model (MAE ViT-tiny, patch 4;
  BERT tiny), fp32, the same batch size.

The ratio loader / step says whether the stream keeps up with training on this machine (> 1: it does; the step
then waits for nothing but itself). The last line is one JSON object (``ours`` = image loader samples/s,
``reference`` = image train-step samples/s, ``ratio``; and the text figures).

    python benchmarks/streaming_speed.py --quick
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "cifar10" / "train.parquet"


def process():
    return SimpleNamespace(num_processes=1, process_index=0, print=lambda *a, **k: None, is_main_process=True,
                           main_process_first=lambda: __import__("contextlib").nullcontext())


def image_shards(folder: Path, images: int, shards: int) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if CIFAR.is_file():
        table = pq.read_table(CIFAR).slice(0, images)
        cells = table.column("img" if "img" in table.column_names else "image").to_pylist()
        data = [c["bytes"] for c in cells]
    else:
        rng = np.random.default_rng(0)
        data = []
        for _ in range(images):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
            data.append(buf.getvalue())
    files = []
    for s, part in enumerate(np.array_split(np.arange(len(data)), shards)):
        path = folder / f"train-{s:03d}.parquet"
        pq.write_table(pa.table({"image": pa.array([{"bytes": data[i], "path": None} for i in part])}), path)
        files.append(str(path))
    return files


def text_shards(folder: Path, shards: int, repeat: int) -> list[str]:
    from pydoc_data.topics import topics

    paragraphs = [p.strip().replace("\n", " ") for k in sorted(topics) for p in topics[k].split("\n\n") if p.strip()]
    files = []
    for s in range(shards):
        path = folder / f"part-{s:03d}.txt"
        path.write_text("\n".join(paragraphs[s::shards] * repeat))
        files.append(str(path))
    return files


def loader_rate(loader, batches: int) -> tuple[float, list]:
    it = iter(loader)
    kept = [next(it)]                               # warm-up: opens the first shard
    t0 = time.perf_counter()
    for _ in range(batches):
        kept.append(next(it))
    elapsed = time.perf_counter() - t0
    size = len(next(iter(kept[0].values())))
    return batches * size / elapsed, kept


def step_rate(objective, batches: list, steps: int) -> float:
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    objective.train()

    def step(batch):
        out = objective(batch)
        loss = out.loss / out.num_targets if out.num_targets is not None else out.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])                                # warm-up
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[1 + i % (len(batches) - 1)])
    size = len(next(iter(batches[0].values())))
    return steps * size / (time.perf_counter() - t0)


def images(tmp: Path, a) -> dict[str, float]:
    from selfsup.modalities.image_views import mae_transform
    from selfsup.recipes._image import ImageRun, load_training_images, view_loader
    from selfsup.recipes.builders.masked import mae

    files = image_shards(tmp, a.images, a.shards)
    run = ImageRun(train_file=files, streaming=True, image_size=32)
    data, _ = load_training_images(run, process())
    loader = view_loader(data, [mae_transform(32)], run, a.batch_size, process())
    rate, kept = loader_rate(loader, a.batches)
    torch.manual_seed(0)
    objective = mae("tiny", image={"image_size": 32, "patch_size": 4})
    return {"image_loader": rate, "image_step": step_rate(objective, kept, a.steps)}


def text(tmp: Path, a) -> dict[str, float]:
    from selfsup.modalities.text import train_tokenizer
    from selfsup.recipes._text import TextRun, text_blocks
    from selfsup.recipes.builders.masked import bert_mlm

    files = text_shards(tmp, a.shards, repeat=4 if a.quick else 12)
    first = Path(files[0]).read_text().splitlines()
    tok = train_tokenizer(first, 4000, max_length=128)
    run = TextRun(train_file=files, streaming=True, max_seq_length=128, streaming_validation_examples=20,
                  max_eval_blocks=4)
    loader, _ = text_blocks(run, None, None, "pydoc", tok, a.batch_size, process())
    rate, kept = loader_rate(loader, a.batches)
    torch.manual_seed(0)
    objective = bert_mlm("tiny", len(tok), tok.mask_token_id, tok.pad_token_id, tok.all_special_ids)
    return {"text_loader": rate, "text_step": step_rate(objective, kept, a.steps)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer batches and steps: under a minute")
    p.add_argument("--images", type=int, default=8000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--batches", type=int, default=None, help="loader batches timed (default 40; --quick 10)")
    p.add_argument("--steps", type=int, default=None, help="train steps timed (default 20; --quick 5)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    a = p.parse_args()
    a.batches = a.batches or (10 if a.quick else 40)
    a.steps = a.steps or (5 if a.quick else 20)
    if a.quick:
        a.images = min(a.images, 2000)
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "img").mkdir()
        (Path(tmp) / "txt").mkdir()
        figures = {**images(Path(tmp) / "img", a), **text(Path(tmp) / "txt", a)}
    for kind in ("image", "text"):
        print(f"{kind}: loader {figures[f'{kind}_loader']:.0f} samples/s, train step {figures[f'{kind}_step']:.0f} "
              f"samples/s, loader / step {figures[f'{kind}_loader'] / figures[f'{kind}_step']:.2f}")
    print(json.dumps({"name": "streaming_speed", "ours": figures["image_loader"], "reference": figures["image_step"],
                      "unit": "samples/s", "ratio": figures["image_loader"] / figures["image_step"],
                      "text_loader": figures["text_loader"], "text_step": figures["text_step"],
                      "text_ratio": figures["text_loader"] / figures["text_step"], "batch_size": a.batch_size,
                      "shards": a.shards, "threads": torch.get_num_threads(),
                      "cifar10": CIFAR.is_file()}))


if __name__ == "__main__":
    main()
