"""Relative patch position (context prediction): the label is the neighbour's place around the centre, patches keep
a gap and are colour-dropped, the loss is the cross-entropy of the neighbour index on [centre, neighbour]
features, and the image recipe trains it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.modalities.image_views import NEIGHBOURS, RelativePatches, ViewDataset
from selfsup.recipes.builders.two_view import two_view
from tests.test_image_recipes import two_view_argv


def cells_image(size: int = 30) -> Image.Image:
    """Each 10 x 10 cell one grey level: 20 * (its row-major index) + 20."""
    a = np.zeros((size, size, 3), dtype=np.uint8)
    for index in range(9):
        r, c = divmod(index, 3)
        a[r * 10:(r + 1) * 10, c * 10:(c + 1) * 10] = 20 * index + 20
    return Image.fromarray(a)


def test_the_label_is_the_neighbours_place_and_the_patches_keep_a_gap():
    seen = set()
    for seed in range(40):
        out = ViewDataset([{"image": cells_image()}], RelativePatches(30, normalize=False, drop_colour_p=0.0),
                          seed=seed)[0]
        centre, neighbour = out["views"]
        k = out["pretext_label"]
        seen.add(k)
        assert centre.shape == neighbour.shape == (3, 7, 7)            # 2/3 of a 10-pixel cell
        assert torch.allclose(centre, torch.full_like(centre, (20 * 4 + 20) / 255))   # all inside the centre cell
        r, c = NEIGHBOURS[k]
        assert torch.allclose(neighbour, torch.full_like(neighbour, (20 * (3 * r + c) + 20) / 255)), k
    assert seen == set(range(8))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8))
    dropped = ViewDataset([{"image": noise}], RelativePatches(30), seed=0)[0]["views"][0]
    stds = dropped.std(dim=(1, 2))
    assert int((stds < 0.05).sum()) == 2 and float(stds.max()) > 0.5   # colour dropping: two channels faint noise


def test_the_loss_is_the_cross_entropy_of_the_neighbour_index_on_centre_then_neighbour():
    torch.manual_seed(0)
    obj = two_view("relative_position", "resnet_tiny", size="tiny", image_size=30).double().eval()
    g = torch.Generator().manual_seed(1)
    centre, neighbour = (torch.randn(5, 3, 7, 7, generator=g, dtype=torch.float64) for _ in range(2))
    labels = torch.tensor([0, 7, 3, 3, 5])
    out = obj({"views": [{"pixel_values": centre}, {"pixel_values": neighbour}], "pretext_labels": labels})
    encoder = obj.encoder()
    feats = torch.cat([encoder.features({"pixel_values": centre}), encoder.features({"pixel_values": neighbour})], 1)
    ref = F.cross_entropy(obj.classifier(feats), labels, reduction="sum")
    assert out.num_targets == 5 and torch.allclose(out.loss.double(), ref, atol=1e-6, rtol=1e-6)
    swapped = obj({"views": [{"pixel_values": neighbour}, {"pixel_values": centre}], "pretext_labels": labels})
    assert not torch.allclose(swapped.loss.double(), ref, atol=1e-4)
    with pytest.raises(ValueError, match="pretext_labels"):
        obj({"views": [{"pixel_values": centre}, {"pixel_values": neighbour}]})


@pytest.mark.long
def test_the_image_recipe_trains_relative_position_and_lists_it(tmp_path, capsys):
    from selfsup.recipes import two_view as recipe

    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    assert "relative_position" in capsys.readouterr().out
    argv = two_view_argv("relative_position")(tmp_path / "run", steps=2)
    argv[argv.index("--image_size") + 1] = "30"
    metrics = recipe.main(argv)
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


def test_the_patch_is_a_fraction_of_a_cell_the_cpu_preset_takes_nine_tenths_and_the_flag_wins():
    from selfsup.modalities.view_pipelines import ViewOptions, view_pipeline
    from selfsup.recipes import two_view as recipe

    (paper,) = view_pipeline("relative_position", ViewOptions(image_size=32)).transforms
    assert (paper.patch, paper.jitter) == (7, 1)                      # 2/3 of a 10-pixel cell: the paper's
    (wide,) = view_pipeline("relative_position", ViewOptions(image_size=32, cell_fraction=0.9)).transforms
    assert (wide.patch, wide.jitter) == (9, 0)
    with pytest.raises(ValueError, match="fraction of a cell"):
        view_pipeline("relative_position", ViewOptions(image_size=32, cell_fraction=1.5))

    def options(*flags):
        args = recipe.build_parser().parse_args(["--method", "relative_position", *flags])
        return recipe.view_options(recipe.settings_from(recipe.TwoViewRun, args))

    assert options().cell_fraction == 0.9                              # the CPU preset's
    assert recipe.TwoViewRun(method="relative_position").preset_settings["max_steps"] == 900
    assert options("--cell_fraction", "0.5").cell_fraction == 0.5
    assert options("--relative_patch", "0.5").cell_fraction == 0.5    # the flag's earlier name
    assert options("--preset", "gpu").cell_fraction is None            # a preset without one: the paper's 2/3
    from selfsup.errors import SelfsupError
    for bad in ("0", "1.5"):                                            # 0 is not "unset"
        with pytest.raises(SelfsupError, match="fraction of a grid cell"):
            options("--cell_fraction", bad)
