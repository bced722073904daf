"""Jigsaw puzzles: the permutation set is Noroozi & Favaro's greedy maximal-Hamming choice, a puzzle's tiles are its
permutation of the cells (and the inverse puts them back), the loss is the cross-entropy of the permutation index
on the tiles' features in position order, and the image recipe trains it."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.modalities.image_views import JigsawTiles, ViewDataset, collate_views, hamming_permutations
from selfsup.recipes.builders.two_view import two_view
from tests.test_image_recipes import two_view_argv


def greedy_reference(count: int, tiles: int, first: int) -> list[tuple[int, ...]]:
    """Algorithm 1 of the paper, written out: add the permutation of largest summed Hamming distance to the chosen."""
    every = list(itertools.permutations(range(tiles)))
    chosen = [every[first]]
    while len(chosen) < count:
        rest = [p for p in every if p not in chosen]
        score = [sum(sum(a != b for a, b in zip(p, q)) for q in chosen) for p in rest]
        chosen.append(rest[int(np.argmax(score))])
    return chosen


def test_the_permutation_set_is_the_greedy_maximal_hamming_choice():
    ours = hamming_permutations(8, tiles=4, seed=5)
    first = int(np.random.default_rng(5).integers(24))
    assert [tuple(p) for p in ours] == greedy_reference(8, 4, first)
    nine = hamming_permutations(100, tiles=9, seed=0)
    assert nine.shape == (100, 9) and len({tuple(p) for p in nine}) == 100
    assert all(sorted(p) == list(range(9)) for p in nine.tolist())
    distances = (nine[:, None, :] != nine[None, :, :]).sum(-1)[np.triu_indices(100, 1)]
    assert distances.mean() > 8.0     # far apart: random pairs of permutations of 9 average 8 different places
    with pytest.raises(ValueError, match="between 1 and 24"):
        hamming_permutations(25, tiles=4)


def puzzle(permutations: np.ndarray, seed: int = 7) -> dict:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    return ViewDataset([{"image": image}], JigsawTiles(30, permutations), seed=seed)[0]


def test_a_puzzles_tiles_are_its_permutation_of_the_cells_and_the_inverse_puts_them_back():
    p = np.array([[2, 0, 1, 5, 3, 4, 8, 6, 7]])
    natural = puzzle(np.arange(9)[None])["views"]          # the same draws, left in cell order
    shuffled = puzzle(p)
    assert shuffled["pretext_label"] == 0 and len(shuffled["views"]) == 9
    for j in range(9):
        assert torch.equal(shuffled["views"][j], natural[p[0, j]])
    inverse = np.argsort(p[0])
    assert all(torch.equal(shuffled["views"][inverse[i]], natural[i]) for i in range(9))
    tile = natural[4]
    assert tile.shape == (3, 9, 9)                          # 64 / 75 of a 10-pixel cell: a gap between tiles
    assert torch.allclose(tile.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)   # each tile normalised on its own
    ten = hamming_permutations(10)
    labels = {puzzle(ten, seed=s)["pretext_label"] for s in range(30)}
    assert len(labels) > 5                                  # the permutation is drawn per example
    batch = collate_views([puzzle(p), puzzle(p, seed=8)])
    assert batch["pretext_labels"].tolist() == [0, 0] and batch["views"][0]["pixel_values"].shape == (2, 3, 9, 9)


def test_the_loss_is_the_cross_entropy_of_the_permutation_on_the_tiles_in_position_order():
    torch.manual_seed(0)
    obj = two_view("jigsaw", "resnet_tiny", size="tiny", image_size=30, num_permutations=6).double().eval()
    g = torch.Generator().manual_seed(1)
    tiles = [{"pixel_values": torch.randn(4, 3, 9, 9, generator=g, dtype=torch.float64)} for _ in range(9)]
    labels = torch.tensor([0, 5, 2, 2])
    out = obj({"views": tiles, "pretext_labels": labels})
    assert out.num_targets == 4
    encoder = obj.encoder()
    joined = torch.cat([encoder.features(t) for t in tiles], dim=1)          # (B, 9 * D): position 0 first
    ref = F.cross_entropy(obj.classifier(joined), labels, reduction="sum")
    assert torch.allclose(out.loss.double(), ref, atol=1e-6, rtol=1e-6)
    swapped = obj({"views": [tiles[1], tiles[0], *tiles[2:]], "pretext_labels": labels})
    assert not torch.allclose(swapped.loss.double(), ref, atol=1e-4)        # where a tile sits is what it learns
    with pytest.raises(ValueError, match="pretext_labels"):
        obj({"views": tiles})


@pytest.mark.long
def test_the_image_recipe_trains_jigsaw_and_lists_it(tmp_path, capsys):
    from selfsup.recipes import two_view as recipe

    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    assert "jigsaw" in capsys.readouterr().out
    argv = two_view_argv("jigsaw")(tmp_path / "run", "--jigsaw_permutations", "10", steps=2)
    argv[argv.index("--image_size") + 1] = "30"
    metrics = recipe.main(argv)
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


def test_the_tile_is_a_fraction_of_a_cell_the_cpu_preset_takes_seven_tenths_and_the_flag_wins():
    """64/75 of a cell without a fraction (the paper's 64 of 75 pixels), 0.7 in the CPU preset; ``--cell_fraction``
    narrows the tiles and widens the gaps between them; the recipe's flag reaches the pipeline."""
    from selfsup.modalities.view_pipelines import ViewOptions, view_pipeline
    from selfsup.recipes import two_view as recipe

    (paper,) = view_pipeline("jigsaw", ViewOptions(image_size=32)).transforms
    assert (paper.cell, paper.tile) == (10, 9)
    (narrow,) = view_pipeline("jigsaw", ViewOptions(image_size=32, cell_fraction=0.7)).transforms
    assert narrow.tile == 7
    views = narrow(torch.rand(3, 32, 32))
    assert [v.shape for v in views["views"]] == [(3, 7, 7)] * 9

    def fraction(*flags):
        args = recipe.build_parser().parse_args(["--method", "jigsaw", *flags])
        return recipe.view_options(recipe.settings_from(recipe.TwoViewRun, args)).cell_fraction

    assert fraction() == 0.7                               # the CPU preset's: wider gaps at 32 pixels
    assert fraction("--preset", "gpu") is None             # the paper's 64/75
    assert fraction("--cell_fraction", "0.5") == 0.5       # the flag over the preset
