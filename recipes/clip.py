"""Pretrain an image tower and a text tower together on image-text pairs: CLIP (Radford et al., 2021) or SigLIP.

    accelerate launch recipes/clip.py                                   # built-in digits + templated captions
    accelerate launch recipes/clip.py --train_file cifar10/train.parquet --zero_shot_dir cifar10
    accelerate launch recipes/clip.py --train_dir captioned_images/ --loss siglip --backbone resnet18

Pairs come from an image column and a text column (imagefolder with metadata.jsonl/csv, parquet, a dataset), or
from a labelled image set whose class names fill prompt templates ("a photo of a {}."). Zero-shot classification
(class names x templates -> averaged text embeddings) runs on ``--zero_shot_dir`` / ``--zero_shot_file`` (or a
held-out 20 % of labelled training pairs), beside a randomly initialised model's. Writes OUTPUT_DIR/metrics.json,
OUTPUT_DIR/zero_shot_confusion.png and OUTPUT_DIR/export/: ``CLIPModel`` + ``CLIPProcessor`` (ViT, CLIP loss),
``SiglipModel`` + ``SiglipProcessor`` (ViT, ``--loss siglip``), or selfsup's own class saved with its code
(ResNet), checked against ours and against transformers' zero-shot-image-classification pipeline.
"""
from __future__ import annotations

from argparse import ArgumentParser
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
from torchvision.transforms import v2

from selfsup.backbones.transformer import num_parameters
from selfsup.checkpoint import resolve_checkpoint
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.distributed import writes_node_files
from selfsup.data import make_train_loader, to_device
from selfsup.errors import SelfsupError, run_cli
from selfsup.evaluate import class_embeddings, confusion_png, zero_shot_scores
from selfsup.export import write_model_card
from selfsup.modalities.image_text import (CLIP_TEMPLATES, PIPELINE_TEMPLATE, ImageTextSet, collate_pairs, load_pairs,
                                           train_caption_tokenizer, training_pair)
from selfsup.modalities.shards import PairStream
from selfsup.streaming import record_index, stream_loader
from selfsup.modalities.image_views import eval_transform
from selfsup.recipes.builders.image_text import clip
from selfsup.objectives.image_text.clip import CLIPObjective
from selfsup.objectives.image_text.hf_clip import clip_from_transformers, export_clip
from selfsup.objectives.two_view.sizes import RESNETS as TWO_VIEW_RESNETS
from selfsup.recipes._image import ImageRun, add_image_args, find_split, patch_readout
from selfsup.run import finish_run, start_run
from selfsup.train import Trainer, TrainingSettings


@dataclass
class ClipRun(ImageRun):
    """The image-text recipe's own settings (the engine's are ``TrainingSettings``); the flags of the same names.
    ``context_length`` defaults to the loss's (CLIP 77, SigLIP 64)."""

    loss: str = "clip"
    backbone: str = "vit"
    patch_size: int | None = None
    local_loss: bool = False
    max_logit_scale: float = 100.0
    text_column: str | None = None
    templates: list[str] = field(default_factory=lambda: list(CLIP_TEMPLATES))
    context_length: int | None = None
    tokenizer_name: str | None = None
    vocab_size: int = 4096
    bad_input: str = "skip"
    crop_scale: tuple[float, float] = (0.9, 1.0)
    hflip: bool = False
    zero_shot_dir: str | None = None
    zero_shot_file: str | None = None
    zero_shot_samples: int = 1000
    pipeline_check_images: int = 8

    def __post_init__(self) -> None:
        if not self.context_length:
            self.context_length = 64 if self.loss == "siglip" else 77
        if self.loss == "siglip" and self.context_length != 64:
            raise SelfsupError("--loss siglip needs --context_length 64 (transformers' SigLIP pipeline pads to 64)")


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/clip", max_steps=100, per_device_train_batch_size=64,
                    learning_rate=5e-4, weight_decay=0.2, warmup_ratio=0.1, logging_steps=1)
    add_image_args(p)
    g = p.add_argument_group("image-text")
    g.add_argument("--loss", default="clip", choices=["clip", "siglip"], help="softmax InfoNCE or SigLIP's sigmoid")
    g.add_argument("--backbone", default="vit", choices=["vit", *TWO_VIEW_RESNETS], help="the image tower")
    g.add_argument("--patch_size", type=int, default=None, help="override the --model_size preset's ViT patch size")
    g.add_argument("--local_loss", action="store_true", help="open_clip's local loss: own rows x gathered columns")
    g.add_argument("--max_logit_scale", type=float, default=100.0, help="clamp of the learned logit multiplier")
    g.add_argument("--text_column", default=None, help="column holding the captions (default: text / caption)")
    g.add_argument("--templates", nargs="+", default=list(CLIP_TEMPLATES),
                   help="prompt templates ({} = class name) for captions of labelled images and zero-shot")
    g.add_argument("--context_length", type=int, default=None, help="text positions (CLIP 77; SigLIP 64)")
    g.add_argument("--tokenizer_name", default=None, help="a CLIP tokenizer folder (default: train one here)")
    g.add_argument("--vocab_size", type=int, default=4096, help="size of a tokenizer trained here")
    g.add_argument("--bad_input", default="skip", choices=["skip", "error"],
                   help="a bad image, missing / empty / too long caption: skip and count it, or stop naming it")
    g.add_argument("--crop_scale", type=float, nargs=2, default=[0.9, 1.0], help="random resized crop area (open_clip)")
    g.add_argument("--hflip", action="store_true", help="random horizontal flips in training")
    z = p.add_argument_group("zero-shot classification")
    z.add_argument("--zero_shot_dir", default=None, help="labelled images: a folder with test.parquet or test/")
    z.add_argument("--zero_shot_file", default=None, help="a labelled image parquet file")
    z.add_argument("--zero_shot_samples", type=int, default=1000, help="labelled images scored (seeded sample)")
    z.add_argument("--pipeline_check_images", type=int, default=8,
                   help="images the transformers pipeline classifies on the export, compared with ours")
    return p


# -- data --------------------------------------------------------------------------------------------------------
def load_training_pairs(run: ClipRun, accelerator) -> ImageTextSet:
    """The image-text pairs of the data flags (scikit-learn's digits with templated captions when none is given:
    the loader says so); with ``--streaming`` a :class:`PairStream` (listed, not opened)."""
    if run.streaming:
        pairs = PairStream(run.train_dir, run.train_file, run.dataset_name, run.image_column, run.text_column,
                           run.label_column, run.templates, run.bad_input, run.stream_shard_size)
        accelerator.print(f"pairs: streaming {len(pairs)} from {pairs.source} in {len(pairs.shards)} shards"
                          + (f", captions from the class names and {len(run.templates)} prompt templates"
                             if pairs.templated else ""))
        return pairs
    with accelerator.main_process_first():
        pairs = load_pairs(train_dir=run.train_dir, train_file=run.train_file, dataset_name=run.dataset_name,
                           dataset_config=run.dataset_config_name, image_column=run.image_column,
                           text_column=run.text_column, label_column=run.label_column, templates=run.templates,
                           bad_input=run.bad_input, max_examples=run.max_train_samples)
    builtin = pairs.source == "builtin:digits"
    accelerator.print(f"pairs: {len(pairs)} from "
                      + ("scikit-learn's built-in digits (8x8, upscaled)" if builtin else pairs.source)
                      + (f" ({pairs.summary()})" if pairs.skipped else "")
                      + (f", captions from the {'digit' if builtin else 'class'} names and {len(run.templates)} "
                         "prompt templates" if pairs.templated else ""))
    return pairs


def zero_shot_images(run: ClipRun, pairs: ImageTextSet) -> tuple[ImageTextSet, ImageTextSet | None, str]:
    """(training pairs, labelled zero-shot images or None, their source): ``--zero_shot_dir`` / ``--zero_shot_file``,
    else a seeded 20 % of labelled training pairs, held out of training."""
    common = dict(image_column=run.image_column, label_column=run.label_column, templates=run.templates,
                  bad_input=run.bad_input)
    if run.zero_shot_dir or run.zero_shot_file:
        where = find_split(Path(run.zero_shot_dir), "test") if run.zero_shot_dir else {"train_file": run.zero_shot_file}
        test = load_pairs(**where, **common)
        source = run.zero_shot_dir or run.zero_shot_file
    elif isinstance(pairs, PairStream):   # a stream holds no pairs out: zero-shot needs --zero_shot_dir / _file
        return pairs, None, ""
    elif pairs.class_names and min(pairs.labels) >= 0:
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(run.seed)).tolist()
        cut = max(1, len(pairs) // 5)
        test, pairs = pairs.subset(sorted(order[:cut])), pairs.subset(sorted(order[cut:]))
        source = f"{pairs.source} (a held-out 20 %)"
    else:
        return pairs, None, ""
    if not test.class_names or min(test.labels) < 0:
        raise SelfsupError(f"{source}: zero-shot images need labels with class names")
    if run.zero_shot_samples and len(test) > run.zero_shot_samples:
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(run.seed))[:run.zero_shot_samples]
        test = test.subset(sorted(order.tolist()))
    return pairs, test, source


def get_tokenizer(run: ClipRun, pairs: ImageTextSet, accelerator):
    """--tokenizer_name, else the --init_from checkpoint's, else the one this run trained on its captions
    (deterministically; reused on resume)."""
    from transformers import AutoTokenizer

    if run.tokenizer_name:
        return AutoTokenizer.from_pretrained(run.tokenizer_name, trust_remote_code=False)
    if run.init_from and (Path(run.init_from) / "tokenizer.json").is_file():   # the checkpoint's own
        return AutoTokenizer.from_pretrained(run.init_from, trust_remote_code=False)
    saved = Path(run.output_dir) / "tokenizer"
    resuming = resolve_checkpoint(run.resume_from_checkpoint, run.output_dir) is not None
    writer = writes_node_files(accelerator, run.output_dir)   # each machine with its own disk trains its copy
    if writer and not (resuming and (saved / "tokenizer.json").is_file()):
        tok = train_caption_tokenizer(pairs.captions(), run.vocab_size, context_length=run.context_length,
                                      attention_mask=run.loss == "clip")
        tok.save_pretrained(str(saved))
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(str(saved))


def train_transform(run: ClipRun) -> v2.Compose:
    steps: list[Any] = [v2.RandomResizedCrop(run.image_size, scale=tuple(run.crop_scale), antialias=True)]
    if run.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                               v2.Normalize(run.image_mean, run.image_std)])


def pair_loader(pairs: ImageTextSet, tokenizer, run: ClipRun, batch_size: int, accelerator):
    """The training loader of ``batch_size`` pairs per process: captions tokenized, each image's view drawn from
    its own seed (streamed: each process its own shards, captions tokenized as a pair is met)."""
    siglip = run.loss == "siglip"
    collate = partial(collate_pairs, pad_token_id=tokenizer.pad_token_id, pad_to=run.context_length if siglip else None,
                      attention_mask=not siglip)
    if isinstance(pairs, PairStream):
        transform = train_transform(run)

        def prepare(pair, shard: int, position: int, epoch: int):
            options = pairs.caption_ids(pair, tokenizer, run.context_length)
            image = None if options is None else pairs.decode(pair.entry)
            if image is None:
                return None
            return training_pair(image, options, pair.label, transform, run.seed, epoch, record_index(shard, position))

        return stream_loader(pairs.shards, pairs.read, prepare, collate, batch_size, accelerator, run.seed,
                             run.stream_shuffle_chunk, pairs.source)
    pairs.tokenize(tokenizer, run.context_length).with_views(train_transform(run), run.seed)
    return make_train_loader(pairs, collate, batch_size, accelerator.num_processes,
                             accelerator.process_index, run.seed, run.dataloader_num_workers)


# -- evaluation --------------------------------------------------------------------------------------------------
class ZeroShot:
    """Labelled images as normalised tensors (``eval_transform``), and zero-shot scoring of an objective."""

    def __init__(self, images: ImageTextSet, tokenizer, run: ClipRun) -> None:
        transform = eval_transform(run.image_size, mean=run.image_mean, std=run.image_std)
        self.raw = [images[i]["image"] for i in range(len(images))]
        self.pixels = torch.stack([transform(im).as_subclass(torch.Tensor) for im in self.raw])
        self.labels, self.class_names = images.labels, images.class_names
        self.tokenizer, self.run = tokenizer, run

    def encode_text(self, objective: CLIPObjective, device) -> Any:
        siglip = self.run.loss == "siglip"

        def encode(texts: list[str]) -> torch.Tensor:
            enc = self.tokenizer(texts, padding="max_length" if siglip else True, max_length=self.run.context_length,
                                 truncation=True, return_tensors="pt")
            batch = {"input_ids": enc["input_ids"].to(device)}
            if not siglip:
                batch["attention_mask"] = enc["attention_mask"].to(device)
            return objective.text_features(batch)
        return encode

    @torch.no_grad()
    def image_features(self, objective: CLIPObjective, device) -> torch.Tensor:
        bs = self.run.per_device_eval_batch_size
        return torch.cat([objective.image_features({"pixel_values": self.pixels[i:i + bs].to(device)}).float().cpu()
                          for i in range(0, len(self.pixels), bs)])

    @torch.no_grad()
    def scores(self, objective: CLIPObjective, device, templates: Sequence[str] | None = None) -> dict[str, Any]:
        was = objective.training
        objective.eval()
        classes = class_embeddings(self.encode_text(objective, device), self.class_names,
                                   templates or self.run.templates).cpu()
        out = zero_shot_scores(self.image_features(objective, device), self.labels, classes)
        objective.train(was)
        return out


def zero_shot_monitor(zs: ZeroShot, device):
    """An ``eval_fn``: the zero-shot accuracy at every ``--eval_steps``."""
    return lambda objective: {f"eval/zero_shot_{k}": v for k, v in zs.scores(objective, device).items()
                              if k in ("accuracy", "top5_accuracy")}


def random_init(run: ClipRun, tokenizer, device) -> CLIPObjective:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed + 1)
        return build_objective(run, tokenizer).to(device)


def evaluate(objective: CLIPObjective, zs: ZeroShot, run: ClipRun, tokenizer, device) -> dict[str, Any]:
    """Zero-shot top-1 / top-5 of the trained model and a random-init one; the trained model's confusion PNG."""
    ours, fresh = zs.scores(objective, device), zs.scores(random_init(run, tokenizer, device), device)
    png = confusion_png(ours["confusion"], zs.class_names, str(Path(run.output_dir) / "zero_shot_confusion.png"),
                        f"zero-shot {run.loss} ({run.backbone}): top-1 {ours['accuracy']:.1%} "
                        f"on {len(zs.labels)} images")
    return {"zero_shot/accuracy": ours["accuracy"], "zero_shot/top5_accuracy": ours["top5_accuracy"],
            "zero_shot/random_init_accuracy": fresh["accuracy"],
            "zero_shot/random_init_top5_accuracy": fresh["top5_accuracy"], "zero_shot/num_images": len(zs.labels),
            "zero_shot/confusion_png": png}


# -- build and export ------------------------------------------------------------------------------------------
def build_objective(run: ClipRun, tokenizer) -> CLIPObjective:
    if run.init_from:
        return clip_from_transformers(run.init_from)
    return clip(run.model_size, run.loss, run.backbone, run.image_size, vocab_size=len(tokenizer),
                image={"patch_size": run.patch_size} if run.patch_size else None,
                context_length=run.context_length, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, local_loss=run.local_loss, max_logit_scale=run.max_logit_scale)


def make_processor(run: ClipRun, tokenizer):
    if run.loss == "siglip":
        from transformers import SiglipImageProcessor, SiglipProcessor

        images = SiglipImageProcessor(size={"height": run.image_size, "width": run.image_size}, resample=2,
                                      image_mean=list(run.image_mean), image_std=list(run.image_std))
        return SiglipProcessor(image_processor=images, tokenizer=tokenizer)
    from transformers import CLIPImageProcessor, CLIPProcessor

    images = CLIPImageProcessor(size={"shortest_edge": run.image_size}, resample=2,
                                crop_size={"height": run.image_size, "width": run.image_size},
                                image_mean=list(run.image_mean), image_std=list(run.image_std))
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def pipeline_check(objective: CLIPObjective, out: Path, zs: ZeroShot, run: ClipRun) -> dict[str, float]:
    """transformers' zero-shot-image-classification pipeline on the export, on the first test images, under its
    default template, against our predictions under the same template."""
    from transformers import pipeline

    n = min(run.pipeline_check_images, len(zs.raw))
    if n == 0:
        return {}
    own = run.backbone != "vit"
    classify = pipeline("zero-shot-image-classification", model=str(out), trust_remote_code=own, device="cpu")
    theirs = [classify(zs.raw[i], candidate_labels=list(zs.class_names))[0]["label"] for i in range(n)]
    objective = objective.float().cpu().eval()
    classes = class_embeddings(zs.encode_text(objective, "cpu"), zs.class_names, [PIPELINE_TEMPLATE])
    with torch.no_grad():
        ours = zero_shot_scores(objective.image_features({"pixel_values": zs.pixels[:n]}), zs.labels[:n], classes)["predictions"]
    agree = sum(zs.class_names[int(p)] == t for p, t in zip(ours, theirs)) / n
    return {"export/pipeline_agreement": agree, "export/pipeline_images": n}


def export(objective: CLIPObjective, run: ClipRun, metrics: dict[str, Any], source: str, tokenizer,
           zs: ZeroShot | None, sample_batch: dict, learning_rate: float) -> Path:
    """OUTPUT_DIR/export: CLIPModel / SiglipModel / selfsup's own class + processor + card, reloaded and compared,
    and transformers' zero-shot pipeline on it against our predictions."""
    out = Path(run.output_dir) / "export"
    metrics.update(export_clip(objective, out, make_processor(run, tokenizer), sample_batch))
    if zs is not None:
        metrics.update(pipeline_check(objective, out, zs, run))
        if metrics.get("export/pipeline_agreement", 1.0) < 1.0:
            print(f"warning: the transformers pipeline disagrees with our zero-shot predictions on "
                  f"{(1 - metrics['export/pipeline_agreement']) * metrics['export/pipeline_images']:.0f} images")
    kind = {"clip": "CLIPModel", "siglip": "SiglipModel"}[run.loss] if run.backbone == "vit" else "selfsup's own class"
    facts = {"objective": run.loss, "pairs": source, "steps": metrics.get("steps"), "image_tower": run.backbone,
             "model_size": run.model_size, "image_size": run.image_size, "context_length": run.context_length,
             "parameters": num_parameters(objective), "local_loss": run.local_loss, "learning_rate": learning_rate}
    remote = ", trust_remote_code=True" if run.backbone != "vit" else ""
    usage = f"""from transformers import pipeline
classify = pipeline("zero-shot-image-classification", model="{run.hub_model_id or out}"{remote})
classify("image.png", candidate_labels=["cat", "dog", "ship"])"""
    write_model_card(out, title=run.hub_model_id or f"{run.loss.upper()} image-text model (selfsup)",
                     pipeline_tag="zero-shot-image-classification",
                     summary=f"An image tower ({run.backbone}) and a text tower pretrained with the {run.loss} loss on "
                             f"{source}; exported as {kind}.", metrics=metrics, run=facts, usage=usage,
                     tags=(run.loss, "zero-shot-image-classification"))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)                                                 # parse
    run = settings_from(ClipRun, args)
    patch_readout(run, None)                    # CLIP reads whole images: --probe_readout patches stops here
    settings = TrainingSettings.from_args(args)
    accelerator = start_run(settings, run.seed)
    pairs = load_training_pairs(run, accelerator)                                          # data
    pairs, test, test_source = zero_shot_images(run, pairs)
    tokenizer = get_tokenizer(run, pairs, accelerator)
    loader = pair_loader(pairs, tokenizer, run, settings.per_device_train_batch_size, accelerator)
    if pairs.skipped:
        accelerator.print(f"pairs: {len(pairs)} after tokenizing ({pairs.summary()})")
    zs = ZeroShot(test, tokenizer, run) if test is not None else None
    if zs is not None:
        accelerator.print(f"zero-shot: {len(zs.labels)} images of {len(zs.class_names)} classes from {test_source}")
    objective = build_objective(run, tokenizer)                                            # build
    accelerator.print(f"{run.loss} on {run.backbone}: {num_parameters(objective.image) / 1e6:.2f}M image + "
                      f"{num_parameters(objective.text) / 1e6:.2f}M text parameters, {settings.max_steps} steps of "
                      f"{settings.per_device_train_batch_size * accelerator.num_processes} pairs")
    eval_fn = zero_shot_monitor(zs, accelerator.device) if zs is not None and settings.eval_steps else None
    trainer = Trainer(objective, loader, settings, accelerator, eval_fn,
                      run_config={"recipe": "clip", "loss": run.loss, "pairs": pairs.source})
    metrics = trainer.train()                                                              # train
    objective, export_dir = trainer.trained_objective(), None
    metrics["logit_scale"] = float(objective.scale().detach())
    if objective.logit_bias is not None:
        metrics["logit_bias"] = float(objective.logit_bias.detach())
    if accelerator.is_main_process:
        if zs is not None:                                                                 # evaluate
            metrics.update(evaluate(objective, zs, run, tokenizer, accelerator.device))
        batch = to_device(next(iter(loader)), torch.device("cpu"))
        batch = {k: v[:4] for k, v in batch.items() if k in ("pixel_values", "input_ids", "attention_mask")}
        export_dir = export(objective, run, metrics, pairs.source, tokenizer, zs, batch,  # export
                            settings.learning_rate)
    return finish_run(accelerator, metrics, run.output_dir, export_dir, run.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
