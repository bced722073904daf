"""Backward passes that add in a fixed order, so that a run on a loaded many-core CPU is still reproducible."""
import torch
from tests.graph_checks import racy_gathers
from tests.test_wav2vec2 import inputs, make

from selfsup.objectives.speech_quantised.wav2vec2 import gather_rows


def test_the_check_finds_a_gather_with_repeated_indices():
    q = torch.randn(10, 4, requires_grad=True)
    assert racy_gathers((q[torch.tensor([[1, 2], [2, 3]])] ** 2).sum()), "repeated rows: racy"
    assert not racy_gathers((q[torch.tensor([0, 5, 7])] ** 2).sum()), "distinct rows: one add each"
    assert not racy_gathers((q[q[:, 0] > 0] ** 2).sum()), "a boolean mask selects distinct rows"


def test_gather_rows_is_advanced_indexing_with_the_same_gradient():
    q = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 30, (12, 5))
    weight = torch.randn(12, 5, 8, dtype=torch.float64)
    ours = gather_rows(q, index)
    assert torch.equal(ours, q[index])
    (grad,) = torch.autograd.grad((ours * weight).sum(), q)
    (ref,) = torch.autograd.grad((q[index] * weight).sum(), q)
    torch.testing.assert_close(grad, ref, rtol=1e-12, atol=1e-12)
    assert not racy_gathers((ours * weight).sum())


def test_wav2vec2_loss_has_no_racy_gather():
    """The negatives repeat frames; gathering them by indexing made runs differ in the conv weights' last bits."""
    obj = make()
    obj.train()
    batch, _ = inputs(obj)
    loss = obj(batch).loss
    assert not racy_gathers(loss)
    batch.pop("sampled_negative_indices")
    assert not racy_gathers(obj(batch).loss), "negatives drawn by the objective"
