"""DeepCluster (Caron et al., 2018): the engine's epoch-start hook (every epoch, not again on a resume in the middle
of one), Lloyd's k-means on separable blobs, the empty-cluster split, the whitened PCA, the pseudo-labels and the
re-initialised classifier, the loss against a plain reference, a recipe run with export and resume, and two
processes clustering as one."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup import kmeans
from selfsup.data import make_train_loader
from selfsup.objectives.clustering.deepcluster import nmi, pca_whiten
from selfsup.recipes.builders.two_view import two_view
from selfsup.train import Trainer, TrainingSettings, make_accelerator
from selfsup.types import EXAMPLE_INDEX, Objective, ObjectiveOutput
from tests.conftest import straight_and_resumed
from tests.test_image_recipes import two_view_argv

N = 20


def make(**kw):
    torch.manual_seed(0)
    return two_view("deepcluster", "resnet_tiny", size="tiny", image_size=16, num_examples=N, **kw).double().eval()


def images(n=N, seed=5):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def epoch_data(order=None, size=7):
    """The whole set as batches the adapter reads with their example indices (in ``order``, ``size`` at a time)."""
    x, order = images(), torch.arange(N) if order is None else torch.as_tensor(order)
    return [{"pixel_values": x[order[i:i + size]], EXAMPLE_INDEX: order[i:i + size]} for i in range(0, N, size)]


def batch(index=(3, 7, 0, 11, 19)):
    index = torch.tensor(index)
    return {"views": [{"pixel_values": images()[index] + 0.1}], EXAMPLE_INDEX: index}


# -- the engine's hook -------------------------------------------------------------------------------------------------
class Recorder(Objective):
    """Records every on_epoch_start call: (epoch, the forwards before it, the data it was given)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.calls, self.forwards = [], 0

    def on_epoch_start(self, epoch, data):
        self.calls.append((epoch, self.forwards, data))

    def forward(self, batch):
        self.forwards += 1
        return ObjectiveOutput((batch["x"] @ self.w).square().sum(), num_targets=len(batch["x"]))


def record(out, steps, **kw):
    a = TrainingSettings(output_dir=str(out), report_to="none", mixed_precision="no", learning_rate=0.1,
                         weight_decay=0.0, warmup_steps=0, lr_scheduler_type="constant", max_steps=steps,
                         per_device_train_batch_size=2, logging_steps=1, checkpoints_total_limit=0, **kw)
    data = [{"x": torch.randn(3, generator=torch.Generator().manual_seed(i))} for i in range(8)]   # 4 steps an epoch
    loader = make_train_loader(data, lambda ex: {"x": torch.stack([e["x"] for e in ex])}, 2, 1, 0, seed=0)
    obj, sentinel = Recorder(), object()
    Trainer(obj, loader, a, make_accelerator(a), epoch_data=sentinel).train()
    assert all(d is sentinel for _, _, d in obj.calls)
    return [(e, f) for e, f, _ in obj.calls]


def test_the_hook_runs_at_every_epoch_start_and_not_again_on_a_resume_in_the_middle_of_one(tmp_path):
    straight = tmp_path / "straight"
    assert record(straight, 10, checkpointing_steps=2) == [(0, 0), (1, 4), (2, 8)]   # before batches 1, 5, 9
    assert record(tmp_path / "mid", 10, resume_from_checkpoint=str(straight / "checkpoint-6")) == [(2, 2)]
    assert record(tmp_path / "edge", 10, resume_from_checkpoint=str(straight / "checkpoint-4")) == [(1, 0), (2, 4)]


# -- k-means -----------------------------------------------------------------------------------------------------------
def test_lloyd_finds_separable_blobs_the_same_way_for_a_seed():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = torch.arange(4).repeat_interleave(25)
    x = centres[truth] + 0.5 * torch.randn(100, 2, generator=g)
    for seed in range(5):                                                     # k-means++ seeding (the default)
        centroids, ids = kmeans.lloyd(x, 4, iterations=10, seed=seed)
        mapping = {int(t): {int(i) for i in ids[truth == t]} for t in range(4)}
        assert all(len(m) == 1 for m in mapping.values())                     # a blob is one cluster
        assert len(set.union(*mapping.values())) == 4                         # four blobs, four clusters
        for t in range(4):                                                    # each centroid its blob's mean
            assert torch.allclose(centroids[ids[truth == t][0]], x[truth == t].mean(dim=0), atol=1e-5)
        assert torch.equal(kmeans.lloyd(x, 4, iterations=10, seed=seed)[1], ids)   # deterministic
    with pytest.raises(ValueError, match="k <= rows"):
        kmeans.lloyd(x[:3], 4)
    found = [kmeans.lloyd(x, 4, iterations=10, seed=seed, init="random")[1] for seed in range(3)]   # faiss's init
    assert all(len(set(ids.tolist())) == 4 for ids in found)             # random rows: k clusters, none empty


def test_an_empty_cluster_takes_a_split_of_a_non_empty_one():
    """Cluster 1 holds the points, cluster 0 one point, cluster 2 none: cluster 2 takes cluster 1's centroid times
    1 + eps (even dims) / 1 - eps (odd), cluster 1's moves the other way, and cluster 1's points go to the nearer."""
    x = torch.tensor([[-5.0, -5.0], [1.0, 1.1], [1.1, 0.9], [0.9, 1.0], [1.2, 1.3], [0.8, 0.7]])
    centroids = torch.tensor([[-5.0, -5.0], [1.0, 1.0], [50.0, 50.0]])
    ids = kmeans.assign(x, centroids)[0]
    assert ids.tolist() == [0, 1, 1, 1, 1, 1]
    eps = kmeans.SPLIT_EPS
    split = kmeans.split_empty(x, ids, centroids, torch.Generator().manual_seed(0))
    assert split == 1                                                     # cluster 0 (one point) is never split
    assert torch.allclose(centroids[2], torch.tensor([1 + eps, 1 - eps]))
    assert torch.allclose(centroids[1], torch.tensor([1 - eps, 1 + eps]))
    assert torch.allclose(centroids[0], torch.tensor([-5.0, -5.0]))
    d = torch.cdist(x[1:], centroids[1:])
    assert ids[0] == 0 and torch.equal(ids[1:], torch.where(d[:, 1] < d[:, 0], 2, 1))   # the nearer of the two
    assert set(ids[1:].tolist()) == {1, 2}                                # the points are divided
    assert torch.bincount(kmeans.lloyd(x, 5, iterations=3, seed=1)[1], minlength=5).min() > 0


def test_the_whitened_pca_is_numpy_s_and_nmi_is_the_textbook_one():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ torch.diag(
        torch.tensor([5.0, 3, 2, 1, 0.5, 0.1], dtype=torch.float64))
    centred = x.numpy() - x.numpy().mean(0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    ref = u[:, :3] * math.sqrt(len(x) - 1)                                # whitened: unit variance per axis
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    y = pca_whiten(x, 3).double().numpy()
    assert y.shape == (40, 3) and np.allclose(y @ y.T, ref @ ref.T, atol=1e-5)   # equal up to the axes' signs
    assert np.allclose(np.abs(y), np.abs(ref), atol=1e-5)
    assert torch.equal(pca_whiten(x, 3), pca_whiten(x.clone(), 3))
    assert np.allclose(pca_whiten(x, 0).double().numpy(), F.normalize(x, dim=1).numpy(), atol=1e-6)
    a, b = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([1, 1, 0, 0, 0, 0])
    pa, pb, joint = [1 / 3] * 3, [1 / 3, 2 / 3], [1 / 3] * 3
    h = lambda p: -sum(v * math.log(v) for v in p)  # noqa: E731
    assert nmi(a, b) == pytest.approx((h(pa) + h(pb) - h(joint)) / math.sqrt(h(pa) * h(pb)))
    assert nmi(a, (a + 1) % 3) == pytest.approx(1.0) and nmi(a, torch.zeros(6, dtype=torch.long)) == 0.0


# -- the objective -----------------------------------------------------------------------------------------------------
def test_the_pseudo_labels_are_k_means_of_every_example_s_whitened_features_and_the_classifier_restarts():
    obj = make()
    with pytest.raises(ValueError, match="no pseudo-labels yet"):
        obj(batch())
    obj.on_epoch_start(0, epoch_data())
    c = obj.config
    with torch.no_grad():
        features = obj.top(obj.encoder().features({"pixel_values": images()}))        # eval mode: no dropout
    ref = kmeans.lloyd(pca_whiten(features, c.pca_dim), c.num_clusters, c.kmeans_iterations,
                       seed=c.seed * 1_000_003, init=c.kmeans_init)[1]
    assert torch.equal(obj.labels, ref) and len(set(ref.tolist())) == c.num_clusters
    shuffled = make()
    shuffled.on_epoch_start(0, epoch_data(order=torch.randperm(N, generator=torch.Generator().manual_seed(1)), size=3))
    assert torch.equal(shuffled.labels, obj.labels)                      # in example order, however the data comes
    assert torch.equal(shuffled.classifier.weight, obj.classifier.weight)
    w = obj.classifier.weight.detach().clone()
    assert float(obj.classifier.bias.detach().abs().max()) == 0 and 0.005 < float(w.std()) < 0.015
    first = obj.labels.clone()
    with torch.no_grad():
        obj.classifier.bias.fill_(1.0)
    obj.on_epoch_start(1, epoch_data())
    assert float(obj.classifier.bias.detach().abs().max()) == 0 and not torch.equal(obj.classifier.weight, w)
    assert float(obj.nmi) == pytest.approx(nmi(obj.labels, first)) and float(obj.nmi) > 0
    assert obj.labels.dtype == torch.long and "labels" in obj.state_dict()   # a persistent buffer


def test_the_loss_is_the_cluster_balanced_cross_entropy_of_the_pseudo_labels():
    for balanced in (True, False):
        obj = make(balanced=balanced)
        obj.on_epoch_start(0, epoch_data())
        labels, b = obj.labels.tolist(), batch()
        counts = Counter(labels)
        with torch.no_grad():
            logits = obj.classifier(F.relu(obj.top(obj.encoder().features(b["views"][0]))))
        ref = 0.0
        for row, i in zip(logits.tolist(), b[EXAMPLE_INDEX].tolist()):
            y = labels[i]
            weight = N / (len(counts) * counts[y]) if balanced else 1.0     # uniform over the clusters
            ref -= weight * (row[y] - math.log(sum(math.exp(v) for v in row)))
        out = obj(b)
        assert out.num_targets == 5 and abs(float(out.loss.detach()) - ref) < 1e-9 * max(1.0, abs(ref))
        per_example = obj.weights[obj.labels]
        assert float(per_example.mean()) == pytest.approx(1.0)             # the weights average 1 over the set


def test_the_clear_errors():
    with pytest.raises(ValueError, match="num_examples >= num_clusters"):
        two_view("deepcluster", "resnet_tiny", size="tiny", image_size=16, num_examples=3)
    obj = make()
    with pytest.raises(ValueError, match="epoch_data"):
        obj.on_epoch_start(0, None)
    with pytest.raises(ValueError, match="covered 14 of the 20"):
        obj.on_epoch_start(0, epoch_data()[:2])
    obj.on_epoch_start(0, epoch_data())
    b = batch()
    del b[EXAMPLE_INDEX]
    with pytest.raises(ValueError, match="example_index"):
        obj(b)


@pytest.mark.long
def test_the_image_recipe_trains_exports_and_resume_keeps_the_labels(tmp_path, capsys):
    """2 steps and an export; then 32 images in batches of 8 (4 steps an epoch): a run resumed at step 2 (in epoch
    0: no new clustering, the checkpoint's labels) equals the straight one at step 6, past epoch 1's clustering."""
    from selfsup.recipes import two_view as recipe

    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    assert "deepcluster" in capsys.readouterr().out
    assert recipe.TwoViewRun(method="deepcluster").preset_settings["max_steps"] == 900    # the CPU preset's budget
    base = two_view_argv("deepcluster")
    metrics = recipe.main(base(tmp_path / "run", "--max_train_samples", "64", steps=2))
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()

    def argv(out, *extra, steps):
        return base(out, "--max_train_samples", "32", *extra, steps=steps)

    straight, resumed, early = straight_and_resumed(recipe.main, argv, tmp_path / "resume", steps=6, at=2)
    assert straight["labels"].shape == (32,) and not torch.equal(straight["labels"], early["labels"])
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


# -- two processes -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    from tests import cluster_worker
    from tests.conftest import ROOT
    from tests.launch import worker_tensors

    out = tmp_path_factory.mktemp("cluster") / "two.safetensors"
    return cluster_worker.run_all(), worker_tensors(2, ROOT / "tests" / "cluster_worker.py", out, timeout=300)


@pytest.mark.long
def test_two_processes_cluster_as_one(one_and_two):
    """Unequal shares of the training set on two processes (world size asserted by the launcher): the gathered
    features, the labels of two clusterings, the weights, the classifier, the losses and the gradients between
    them equal one process's; every process holds the same labels."""
    one, two = one_and_two
    assert sorted(one) == sorted(k for k in two if not k.startswith("__"))
    assert {"features0", "labels0", "labels1", "loss1", "weights1"} <= set(one)
    assert len(set(one["labels0"].tolist())) > 1 and float(two["__same_labels_on_every_rank"]) == 1.0
    for k in one:
        if k.startswith("labels"):
            assert torch.equal(one[k], two[k]), k
        else:
            assert torch.allclose(one[k], two[k], atol=1e-9, rtol=1e-7), (k, float((one[k] - two[k]).abs().max()))
