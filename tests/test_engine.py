"""Engine behaviour that needs no real model: non-finite losses are skipped, then stop the run in one line."""
import pytest
import torch

from selfsup.data import make_train_loader
from selfsup.errors import SelfsupError
from selfsup.train import MAX_NONFINITE_STEPS, Trainer, TrainingSettings, make_accelerator
from selfsup.types import Objective, ObjectiveOutput


class Toy(Objective):
    """A linear model whose loss is NaN for the first ``bad`` calls."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.bad, self.calls = bad, 0

    def forward(self, batch):
        self.calls += 1
        loss = (batch["x"] @ self.w).square().sum()
        if self.calls <= self.bad:
            loss = loss * float("nan")
        return ObjectiveOutput(loss=loss, num_targets=batch["x"].shape[0])


def args(tmp_path, steps: int) -> TrainingSettings:
    return TrainingSettings(output_dir=str(tmp_path), report_to="none", mixed_precision="no", learning_rate=0.1,
                            weight_decay=0.0, warmup_steps=0, lr_scheduler_type="constant", max_steps=steps,
                            per_device_train_batch_size=2, logging_steps=1, checkpoints_total_limit=0)


def run(tmp_path, bad: int, steps: int = 3):
    a = args(tmp_path, steps)
    acc = make_accelerator(a)
    data = [{"x": torch.randn(3)} for _ in range(8)]
    loader = make_train_loader(data, lambda ex: {"x": torch.stack([e["x"] for e in ex])}, 2, 1, 0, seed=0)
    toy = Toy(bad)
    return toy, Trainer(toy, loader, a, acc).train()


def test_a_few_nan_losses_are_skipped_without_touching_the_weights(tmp_path):
    toy, metrics = run(tmp_path, bad=2)
    assert metrics["steps"] == 3 and toy.calls == 5  # 2 skipped micro-batches, then 3 real steps
    assert torch.isfinite(toy.w).all() and not torch.equal(toy.w.detach(), torch.ones(3))


def test_persistent_nan_losses_stop_the_run_in_one_line(tmp_path):
    with pytest.raises(SelfsupError, match=f"not finite for {MAX_NONFINITE_STEPS} steps") as err:
        run(tmp_path, bad=1000)
    assert "\n" not in str(err.value)


def test_runs_in_one_process_may_change_precision(tmp_path):
    """accelerate keeps one global state; a second run with another --mixed_precision still gets its own."""
    precisions = []
    for i, precision in enumerate(("bf16", "no", "bf16")):
        a = args(tmp_path / str(i), 1)
        a.mixed_precision = precision
        precisions.append(make_accelerator(a).mixed_precision)
    assert precisions == ["bf16", "no", "bf16"]


def test_trainer_takes_typed_settings_not_the_command_line(tmp_path):
    from argparse import Namespace

    from selfsup.config import base_parser

    flags = base_parser("x").parse_args(["--max_steps", "7", "--learning_rate", "0.25", "--output_dir", "o"])
    settings = TrainingSettings.from_args(flags, report_to="none")
    assert (settings.max_steps, settings.learning_rate, settings.output_dir, settings.report_to) == (7, 0.25, "o", "none")
    assert settings.warmup == int(0.06 * 7)
    toy = Toy(0)
    loader = make_train_loader([{"x": torch.randn(3)}] * 4, lambda ex: {"x": torch.stack([e["x"] for e in ex])},
                               2, 1, 0, seed=0)
    with pytest.raises(TypeError, match="TrainingSettings"):
        Trainer(toy, loader, Namespace(**vars(flags)), make_accelerator(args(tmp_path, 1)))


def test_pictures_an_eval_returns_go_to_tensorboard_not_to_the_figures(tmp_path):
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    a = args(tmp_path, 2)
    a.report_to = "tensorboard"
    picture = np.zeros((6, 8, 3), dtype=np.uint8)
    picture[:, :4, 0] = 255
    loader = make_train_loader([{"x": torch.randn(3)}] * 4, lambda ex: {"x": torch.stack([e["x"] for e in ex])},
                               2, 1, 0, seed=0)
    trainer = Trainer(Toy(0), loader, a, make_accelerator(a),
                      eval_fn=lambda obj: {"eval/w": float(obj.w.sum()), "images/grid": picture})
    metrics = trainer.train()
    assert "eval/w" in metrics and "images/grid" not in metrics
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents*")).parent), size_guidance={"images": 0})
    events.Reload()
    assert "images/grid" in events.Tags()["images"]
    image = events.Images("images/grid")[-1]
    assert (image.width, image.height, image.step) == (8, 6, 2)


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_optimizer_choices(tmp_path, name):
    from selfsup.train import make_optimizer

    a = args(tmp_path, 1)
    a.optimizer = name
    opt = make_optimizer(torch.nn.Linear(3, 2), a, torch.device("cpu"))
    assert type(opt).__name__ == name.upper()
    assert [g["weight_decay"] for g in opt.param_groups] == [a.weight_decay, 0.0]
    a.optimizer = "adam"
    with pytest.raises(SelfsupError, match="unknown optimizer 'adam'"):
        make_optimizer(torch.nn.Linear(3, 2), a, torch.device("cpu"))


def test_sampler_keeps_the_last_incomplete_batch_when_asked():
    """drop_last=False: every example once per epoch; the last global batch split near-equally, so two processes
    see together exactly what one sees."""
    from selfsup.data import ShardedBatchSampler

    one = list(ShardedBatchSampler(11, 4, seed=3, drop_last=False))
    assert [len(b) for b in one] == [4, 4, 3] and sorted(sum(one, [])) == list(range(11))
    two = [list(ShardedBatchSampler(11, 2, 2, r, seed=3, drop_last=False)) for r in (0, 1)]
    assert [a + b for a, b in zip(*two)] == one and [len(b) for b in two[1]] == [2, 2, 1]
    assert len(ShardedBatchSampler(11, 4, seed=3)) == 2                     # dropped by default
    assert len(ShardedBatchSampler(9, 4, 2, 0, drop_last=False)) == 1      # 1 left over: fewer than 2 processes


def curve_run(out, steps: int, **settings):
    a = args(out, steps)
    for k, v in settings.items():
        setattr(a, k, v)
    data = [{"x": torch.randn(3, generator=torch.Generator().manual_seed(i))} for i in range(8)]
    loader = make_train_loader(data, lambda ex: {"x": torch.stack([e["x"] for e in ex])}, 2, 1, 0, seed=0)
    trainer = Trainer(Toy(0), loader, a, make_accelerator(a),
                      eval_fn=lambda obj: {"eval/loss": float(obj.w.square().sum()), "eval/w0": float(obj.w[0])},
                      run_config={"recipe": "toy"})
    return trainer, trainer.train()


def test_every_run_draws_its_training_curves(tmp_path):
    import json

    from PIL import Image

    from selfsup.run import summary

    trainer, metrics = curve_run(tmp_path, 4, eval_steps=2)
    png, data = tmp_path / "training_curves.png", json.loads((tmp_path / "training_curves.json").read_text())
    assert metrics["training_curves"] == str(png)
    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 400
    assert data["train/loss"] == {"steps": [1, 2, 3, 4], "values": trainer.history} and len(trainer.history) == 4
    assert data["eval/loss"]["steps"] == data["eval/w0"]["steps"] == [2, 4]
    assert data["eval/loss"]["values"][-1] == metrics["eval/loss"]
    assert f"curves:  {png}" in summary(metrics, None, tmp_path)


class Counting(Toy):
    """Toy reporting figures of its own: its call number, and on even calls a second one."""

    def forward(self, batch):
        out = super().forward(batch)
        out.metrics = {"call": torch.tensor(float(self.calls))} | ({"even": 1.0} if self.calls % 2 == 0 else {})
        return out


def test_the_objective_s_own_figures_end_in_the_metrics_and_the_summary(tmp_path):
    """The objective's metrics (a pretext task's accuracy, say), averaged over the last logging window of steps,
    are in the run's figures as train/<name> and on a line of the summary."""
    from selfsup.run import summary

    a = args(tmp_path, 6)
    a.logging_steps = 4
    data = [{"x": torch.randn(3)} for _ in range(8)]
    loader = make_train_loader(data, lambda ex: {"x": torch.stack([e["x"] for e in ex])}, 2, 1, 0, seed=0)
    metrics = Trainer(Counting(0), loader, a, make_accelerator(a)).train()
    assert metrics["train/call"] == (3 + 4 + 5 + 6) / 4 and metrics["train/even"] == 1.0   # steps 3-6 of 6
    assert "  last steps: call 4.5, even 1" in summary(metrics, None, tmp_path).splitlines()
    plain = Trainer(Toy(0), loader, args(tmp_path / "plain", 2), make_accelerator(a)).train()
    assert not any(k.startswith("train/") for k in plain)
    assert "last steps" not in summary(plain, None, tmp_path)


def test_a_resumed_run_draws_the_whole_run(tmp_path):
    import json

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    curve_run(straight, 6, eval_steps=2, checkpointing_steps=3, checkpoints_total_limit=0)
    curve_run(resumed, 6, eval_steps=2, resume_from_checkpoint=str(straight / "checkpoint-3"))
    a, b = (json.loads((d / "training_curves.json").read_text()) for d in (straight, resumed))
    assert a["train/loss"]["steps"] == list(range(1, 7)) and a == b
