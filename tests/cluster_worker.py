"""Worker for DeepCluster's two-process test: a tiny ResNet clusters 17 images (each process walks its share, every
other image from its rank on, as the image recipe's ``epoch_images``: 9 and 8), takes two SGD steps on fixed global
batches split unequally over the processes (``tests/torchrun_worker.py``; the loss a sum over rows divided by the
global count, as the engine divides it), then clusters again. Saves the gathered features, both clusterings' labels,
the cluster weights, the classifier, the losses and the last step's gradients. Run as ``torchrun --nproc_per_node N
tests/cluster_worker.py OUT`` (or plainly for one process)."""
from __future__ import annotations

import torch

from selfsup.distributed import rank, world_size
from selfsup.objectives.two_view.common import gather_rows
from selfsup.recipes.builders.two_view import two_view
from selfsup.types import EXAMPLE_INDEX
from tests.torchrun_worker import local_views, serve, sgd_steps

NUM_EXAMPLES, GLOBAL_BATCH, STEPS = 17, 10, 2
IMAGES = torch.randn(NUM_EXAMPLES, 3, 16, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def share(batch_size: int = 4) -> list[dict]:
    """This process's share of the whole set, in batches."""
    index = torch.arange(rank(), NUM_EXAMPLES, world_size())
    return [{"pixel_values": IMAGES[index[i:i + batch_size]], EXAMPLE_INDEX: index[i:i + batch_size]}
            for i in range(0, len(index), batch_size)]


def global_batch(step: int) -> dict:
    g = torch.Generator().manual_seed(100 + step)
    index = torch.randperm(NUM_EXAMPLES, generator=g)[:GLOBAL_BATCH]
    return {"views": [{"pixel_values": IMAGES[index] + 0.1 * torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g,
                                                                         dtype=torch.float64)}],
            EXAMPLE_INDEX: index}


def run_all() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    obj = two_view("deepcluster", "resnet_tiny", size="tiny", image_size=16, num_examples=NUM_EXAMPLES,
                   dropout=0.0).double().train()
    out = {"features0": obj.example_features(share())}
    obj.on_epoch_start(0, share())
    out["labels0"] = obj.labels.clone()
    out.update(sgd_steps(obj, lambda step: local_views(global_batch(step)), STEPS, each_step=False))
    obj.on_epoch_start(1, share())
    every = gather_rows(obj.labels[None])                                 # (world, N): each process's labels
    out.update(labels1=obj.labels.clone(), weights1=obj.weights.clone(), nmi1=obj.nmi.reshape(1).clone(),
               classifier1=obj.classifier.weight.detach().clone())
    if world_size() > 1:
        out["__same_labels_on_every_rank"] = torch.tensor([float(bool((every == every[0]).all()))])
    return out


if __name__ == "__main__":
    serve(run_all)
