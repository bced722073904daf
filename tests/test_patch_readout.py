"""``--probe_readout patches``: a method trained on patches (jigsaw, relative position) is scored through the 3 x 3
grid of patches it was trained on -- each cut at its cell's centre and normalised on its own, exactly as the
training patches are -- the features of the nine averaged, for the trained and the random-init encoder alike;
methods on whole images stop with one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.errors import SelfsupError
from selfsup.modalities.image_views import JigsawTiles, RelativePatches, ViewDataset, grid_readout
from selfsup.modalities.view_pipelines import ViewOptions, view_pipeline
from selfsup.recipes._image import ImageRun, PatchAverage, patch_readout
from selfsup.recipes.builders.two_view import two_view
from tests.test_image_recipes import two_view_argv


def noise_image(size: int = 30, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_the_grid_is_the_training_patches_of_every_cell_normalised_alike():
    image = noise_image()
    grid = grid_readout(30, 9)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 255
    patches = grid(x)
    assert patches.shape == (1, 9, 3, 9, 9)
    # a 9-pixel patch in a 10-pixel cell has no jitter: the training patch of neighbour k is the grid's patch there
    from selfsup.modalities.image_views import NEIGHBOURS
    for seed in range(12):
        out = ViewDataset([{"image": image}], RelativePatches(30, 9, drop_colour_p=0.0), seed=seed)[0]
        r, c = NEIGHBOURS[out["pretext_label"]]
        torch.testing.assert_close(out["views"][0], patches[0, 4], rtol=0, atol=1e-5)      # the centre cell
        torch.testing.assert_close(out["views"][1], patches[0, 3 * r + c], rtol=0, atol=1e-5)
    flat = patches.flatten(-2)
    torch.testing.assert_close(flat.mean(-1), torch.zeros(1, 9, 3), rtol=0, atol=1e-5)
    # the patches are cut from the image: affine changes per channel (the evaluation's normalisation) do not move them
    torch.testing.assert_close(grid((x - 0.4) / 0.2), patches, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="does not fit a 10-pixel cell"):
        grid_readout(30, 11)
    with pytest.raises(ValueError, match="grid readout of 30-pixel images"):
        grid(torch.zeros(1, 3, 32, 32))


def test_the_pipelines_on_patches_read_through_their_own_patch_size():
    relpos = view_pipeline("relative_position", ViewOptions(image_size=32, cell_fraction=0.9))
    jigsaw = view_pipeline("jigsaw", ViewOptions(image_size=32, cell_fraction=0.7))
    assert relpos.patch_readout(torch.zeros(2, 3, 32, 32)).shape == (2, 9, 3, 9, 9)
    (tiles,) = jigsaw.transforms
    assert isinstance(tiles, JigsawTiles)
    assert jigsaw.patch_readout(torch.zeros(2, 3, 32, 32)).shape == (2, 9, 3, tiles.tile, tiles.tile)
    assert view_pipeline("simclr", ViewOptions(image_size=32)).patch_readout is None
    run = ImageRun(probe_readout="patches")
    assert patch_readout(run, relpos) is relpos.patch_readout
    assert patch_readout(ImageRun(), relpos) is None
    with pytest.raises(SelfsupError, match="trained on whole images"):
        patch_readout(run, view_pipeline("simclr", ViewOptions(image_size=32)))


def test_an_image_is_the_mean_of_its_patches_features_on_every_view():
    torch.manual_seed(0)
    encoder = two_view("relative_position", "resnet_tiny", size="tiny", image_size=30).encoder().eval()
    x = torch.randn(4, 3, 30, 30)
    cut = grid_readout(30, 9)
    got = PatchAverage(encoder, cut).pooled_views({"pixel_values": x}, ("last", "all_layers"))
    patches = cut(x)
    for view in ("last", "all_layers"):
        each = [encoder.pooled_views({"pixel_values": patches[:, k]}, (view,))[view] for k in range(9)]
        torch.testing.assert_close(got[view], torch.stack(each).mean(0), rtol=1e-5, atol=1e-5)
    whole = encoder.pooled_views({"pixel_values": x})["last"]
    assert not torch.allclose(got["last"], whole, atol=1e-3)


def test_whole_image_methods_stop_before_training(tmp_path):
    from selfsup.recipes import mae, two_view as recipe

    with pytest.raises(SelfsupError, match="--probe_readout patches: simclr is trained on whole images"):
        recipe.main(two_view_argv("simclr")(tmp_path / "a", "--probe_readout", "patches"))
    with pytest.raises(SelfsupError, match="trained on whole images"):
        mae.main(["--output_dir", str(tmp_path / "b"), "--probe_readout", "patches", "--report_to", "none"])
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").glob("checkpoint-*"))


@pytest.mark.long
def test_a_jigsaw_run_scores_both_encoders_and_its_monitor_through_the_grid(tmp_path):
    from selfsup.recipes import two_view as recipe

    def argv(out, *extra):
        a = two_view_argv("jigsaw")(out, "--jigsaw_permutations", "4", *extra, steps=2)
        a[a.index("--image_size") + 1] = "30"
        return a

    image = recipe.main(argv(tmp_path / "image", "--eval_steps", "1"))
    patches = recipe.main(argv(tmp_path / "patches", "--probe_readout", "patches", "--eval_steps", "1"))
    assert patches["train_loss"] == image["train_loss"]                    # the same training
    # the kNN monitor during training reads the encoder as the final kNN does: at the last step they agree
    assert patches["eval/knn/accuracy"] == patches["knn/accuracy"]
    assert image["eval/knn/accuracy"] == image["knn/accuracy"]
    for key in ("knn/accuracy", "knn/random_init_accuracy"):
        assert 0.0 <= patches[key] <= 1.0
    assert (patches["knn/accuracy"], patches["knn/random_init_accuracy"]) != (image["knn/accuracy"],
                                                                              image["knn/random_init_accuracy"])
