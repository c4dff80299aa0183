"""PnP Feature Preview and PnP Flux/Chroma/HunyuanVideo Feature Preview: principal components of kept features as a
picture at the source image's size."""
import dataclasses

import pytest
import torch

import family_reference
import flux_harness as fh
import harness
import hunyuan_reference
from comfyui_pnp.nodes.preview import PnPFeaturePreview, PnPFluxFeaturePreview
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection import preview as core_preview
from comfyui_pnp.pnp_injection.flow import inversion as flux_inversion
from comfyui_pnp.pnp_injection.flow import kv_edit
from comfyui_pnp.pnp_injection.flow import layers as flux_layers
from comfyui_pnp.pnp_injection.flow import preview as flow_preview
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, preview


@pytest.fixture(scope="module")
def bank():
    model = harness.make_model("sd15")
    frames = torch.cat([harness.latent(seed=1), harness.latent(seed=2)])
    trajectory = inversion.invert(model, frames, harness.conditioning(seed=5), steps=5, evaluations=5)
    return banks.capture(model, trajectory)


def at_cells(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A picture's colour at each cell of a feature grid ([rows, h, w, 3]): the nearest-neighbour
    enlargement undone (each cell's block read at its centre)."""
    cells = torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), size=grid, mode="nearest-exact")
    return cells.permute(0, 2, 3, 1)


def assert_principal_components(image: torch.Tensor, features: torch.Tensor, grid: tuple[int, int]):
    """Each colour channel is the features' projection on one of their first three principal components
    (found here from the covariance's eigenvectors, not the product's SVD), scaled to span exactly
    [0, 1] over all rows together. Fails if the scaling were dropped or done per row (then clamped:
    the clamp saturates, and the channel is no longer a straight function of the projection), or if
    another component, the wrong tokens or the wrong cell layout were drawn."""
    rows, tokens, channels = features.shape
    x = features.double().reshape(rows * tokens, channels)
    x = x - x.mean(dim=0)
    values, vectors = torch.linalg.eigh(x.T @ x)
    projections = x @ vectors[:, values.argsort(descending=True)[:3]]
    drawn = at_cells(image, grid).reshape(rows * tokens, 3).double()
    for c in range(3):
        assert float(drawn[:, c].min()) == 0.0 and float(drawn[:, c].max()) == 1.0, f"channel {c} does not span [0, 1]"
        r = torch.corrcoef(torch.stack([drawn[:, c], projections[:, c]]))[0, 1]
        assert abs(float(r)) > 0.9999, f"channel {c} is not the projection on component {c} (r = {float(r):.4f})"


@pytest.mark.parametrize("features, block", [("resblock", -1), ("attention input", 9), ("attention input", 4)])
def test_preview_is_an_image_of_the_features(bank, features, block):
    """At the source image's size (8 px per latent cell: 128 px for the 16-cell test latent), one picture per
    source row, each channel a principal component of the layer's features at that step; the rows differ."""
    (image,) = PnPFeaturePreview.execute(bank, 1, features, block, 0).result
    assert image.shape == (2, 128, 128, 3)  # one per source row, at the source's size
    if features == "resblock":
        held = bank.residual[bank.layers.resblocks[0]][1]
        grid, tokens = tuple(held.shape[-2:]), held.flatten(2).transpose(1, 2)
    else:
        tokens = bank.attention[(block, 0)][1]
        side = int(tokens.shape[1] ** 0.5)
        grid = (side, side)
    assert_principal_components(image, tokens, grid)
    assert harness.rel(image[0], image[1]) > 0.05  # each frame its own structure


def test_components_are_the_principal_ones():
    """A feature map whose channels vary along one spatial axis: the first component follows it."""
    ramp = torch.linspace(-1, 1, 8)
    grid = ramp.view(1, 8, 1).expand(1, 8, 8)  # varies along height
    features = torch.stack([grid * 3, grid * -2, torch.zeros_like(grid)], dim=-1).reshape(1, 64, 3)
    image = preview.principal_components_rgb(features + 1e-3 * torch.randn(1, 64, 3), (8, 8), (8, 8))
    red = image[0, :, :, 0]
    assert float((red[:, 0] - red[:, -1]).abs().max()) < 0.05  # constant across width
    assert abs(float(red[0, 0] - red[-1, 0])) > 0.9  # spans the range across height


def test_preview_of_a_step_or_layer_the_bank_lacks_names_what_it_holds(bank):
    with pytest.raises(PnPError, match="steps 0..3"):
        preview.preview(bank, 7)
    with pytest.raises(PnPError, match="holds 4@0, 5@0"):
        preview.preview(bank, 0, "attention", 3)


# --- PnP Flux/Chroma/HunyuanVideo Feature Preview ---

FLUX_LAYERS = "double.0:k,v; single.1:k@image; single.2-3:v"  # image-token sites and all-token ones (text first)
FLUX_STEPS, FLUX_KEPT, TEXT = 3, 2, 9


@pytest.fixture(scope="module")
def flux():
    return fh.make_flux(seed=3, double=1, single=4)


@pytest.fixture(scope="module")
def flux_bank(flux):
    """Two source rows of 10x14 latent cells (5x7 tokens), RF-Solver (two slots per kept step)."""
    source = torch.cat([fh.latent(seed=1, size=14), fh.latent(seed=2, size=14)])[..., :10, :]
    return flux_inversion.invert(flux, source, fh.conditioning(seed=5, tokens=TEXT, batch=2), FLUX_STEPS, FLUX_KEPT,
                                 custom_layers=FLUX_LAYERS)


@pytest.mark.parametrize("site", ["double.0.k", "single.1.k", "single.2.v", ""])
def test_flux_preview_is_the_image_tokens_at_the_source_size(flux_bank, site):
    """16x16 px per token (2x2 latent cells of 8 px), one picture per source row, each token one colour,
    each channel a principal component of the site's image tokens at the step's first evaluation (slot 2
    for step 1 of RF-Solver): the text tokens that all-token single sites also hold are left out."""
    (image,) = PnPFluxFeaturePreview.execute(flux_bank, site, 1, 0).result
    assert image.shape == (2, 80, 112, 3)
    blocks = image.reshape(2, 5, 16, 7, 16, 3)
    assert float((blocks - blocks[:, :, :1, :, :1]).abs().max()) == 0.0  # one colour per token
    key = site or "double.0.k"  # the bank's first
    features = flux_bank.tables[key][2]
    assert_principal_components(image, features[:, TEXT:] if key == "single.2.v" else features, (5, 7))
    assert harness.rel(image[0], image[1]) > 0.05


def test_flux_preview_moves_with_its_features(flux_bank):
    """Mirroring the image tokens of every table (left-right) mirrors the picture (up to each component's
    arbitrary sign and float rounding), and another step
    draws another picture: the picture is the features', token by token. Fails if tokens were read in
    another order, from the text's end, or the step were ignored."""
    def mirrored(table):
        text = table.shape[2] - 35
        image = table[:, :, text:].reshape(*table.shape[:2], 5, 7, -1).flip(3).reshape(*table.shape[:2], 35, -1)
        return torch.cat([table[:, :, :text], image], dim=2)
    flipped = dataclasses.replace(flux_bank, tables={k: mirrored(t) for k, t in flux_bank.tables.items()})
    for site in ("double.0.v", "single.3.v"):
        got, expected = flow_preview.preview(flipped, site, 0), flow_preview.preview(flux_bank, site, 0).flip(2)
        for c in range(3):  # a component's sign is arbitrary: a channel may come out as 1 - itself
            assert min(float((got[..., c] - expected[..., c]).abs().max()),
                       float((got[..., c] - (1 - expected[..., c])).abs().max())) < 1e-4, (site, c)
        assert harness.rel(flow_preview.preview(flux_bank, site, 1), flow_preview.preview(flux_bank, site, 0)) > 0.05


def pattern_bank(flux_bank, family: str, noise_shape, text_last: bool):
    """`flux_bank` recast to another family's token layout: every table's image tokens carry a ramp along the
    height (and an offset per frame), its text tokens large noise, before or after the image's."""
    frames, h, w = (noise_shape[2], noise_shape[3] // 2, noise_shape[4] // 2) if len(noise_shape) == 5 else \
        (1, noise_shape[2] // 2, noise_shape[3] // 2)
    ramp = torch.linspace(-1, 1, h).view(1, h, 1).expand(frames, h, w) + torch.arange(frames).view(frames, 1, 1) * 10
    image = torch.stack([ramp * 3, -2 * ramp, torch.zeros_like(ramp)], dim=-1).reshape(1, 1, frames * h * w, 3)
    image = image + 1e-3 * torch.randn(1, 1, frames * h * w, 3, generator=torch.Generator().manual_seed(0))
    text = 1e3 * torch.randn(1, 1, TEXT, 3, generator=torch.Generator().manual_seed(1))
    tables = {}
    for key, table in flux_bank.tables.items():
        all_tokens = key.startswith("single.2") or key.startswith("single.3")
        parts = ([image, text] if text_last else [text, image]) if all_tokens else [image]
        tables[key] = torch.cat(parts, dim=2).expand(table.shape[0], 1, -1, 3).clone()
    return dataclasses.replace(flux_bank, tables=tables, noise=torch.zeros(noise_shape), text_tokens=TEXT,
                               architecture=f"{family}:1x4:hidden64:heads2")


@pytest.mark.parametrize("family, shape, text_last", [("flux1", (1, 16, 8, 6), False),
                                                      ("hunyuan_video", (1, 16, 3, 8, 6), True)])
def test_flux_preview_reads_each_familys_token_layout(flux_bank, family, shape, text_last):
    """Features that vary along the height only (text tokens: large noise): the first component is constant
    across the width and spans the height, on Flux.1 (text first) and HunyuanVideo (1x2x2 tokens over
    frames, text last); on video, `frame` picks a frame and -1 draws them all. Fails if the text's tokens
    were drawn, or taken from the wrong end, or the grid's axes swapped."""
    bank = pattern_bank(flux_bank, family, shape, text_last)
    frames = shape[2] if len(shape) == 5 else 1
    for site in ("double.0.k", "single.2.v"):
        one = flow_preview.preview(bank, site, 0, frames - 1)  # the last frame alone (the only one of an image)
        assert one.shape == (1, shape[-2] * 8, shape[-1] * 8, 3)
        red = one[0, ..., 0]
        assert float((red - red[:, :1]).abs().max()) < 0.01  # constant across the width
        assert abs(float(red[0, 0] - red[-1, 0])) > 0.99  # spans [0, 1] down the height
        if frames > 1:  # every frame, in one colour map: the frames' offsets order them
            drawn = flow_preview.preview(bank, site, 0, -1)
            assert drawn.shape == (frames, *one.shape[1:])
            assert all(float((d[..., 0] - d[:, :1, 0]).abs().max()) < 0.01 for d in drawn)
            means = [float(d[..., 0].mean()) for d in drawn]
            assert means in (sorted(means), sorted(means, reverse=True)) and abs(means[0] - means[-1]) > 0.5


FAMILY_MODELS = {"chroma": (family_reference.make_chroma, family_reference.latent_for,
                            family_reference.conditioning_for),
                 "flux2": (family_reference.make_flux2, family_reference.latent_for,
                           family_reference.conditioning_for),
                 "hunyuan_video": (hunyuan_reference.make_hunyuan_video, lambda model: hunyuan_reference.video_latent(),
                                   hunyuan_reference.conditioning_for)}


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
@pytest.mark.parametrize("solver", ["rf_solver", "fireflow"])
def test_flux_preview_of_each_familys_own_bank(family, solver):
    """Banks of the host's Chroma, Flux.2 and HunyuanVideo (shrunk, real block counts), RF-Solver and FireFlow
    (whose one slot per step is the midpoint): 16 px per token everywhere (Chroma 2x2 cells of 8 px, Flux.2 one
    cell of 16 px, HunyuanVideo 2x2 cells of 8 px per frame), one colour per token, one picture per latent
    frame with `frame` -1, and that frame's picture alone with `frame` set."""
    make, latent_for, conditioning_for = FAMILY_MODELS[family]
    model = make()
    source = latent_for(model)
    preset = ("fireflow" if solver == "fireflow" else "rf-solver-edit" if family == "hunyuan_video"
              else flux_layers.ANALOGY)
    bank = flux_inversion.invert(model, source, conditioning_for(model, seed=5), 2, 1, preset, solver=solver)
    cells = 16 if family == "flux2" else 8
    frames = source.shape[2] if source.ndim == 5 else 1
    every = flow_preview.preview(bank, "", -1, -1)
    assert every.shape == (frames, source.shape[-2] * cells, source.shape[-1] * cells, 3)
    blocks = every.reshape(frames, every.shape[1] // 16, 16, every.shape[2] // 16, 16, 3)
    assert float((blocks - blocks[:, :, :1, :, :1]).abs().max()) == 0.0 and float(every.std()) > 0.1
    last = flow_preview.preview(bank, "", 0, frames - 1)
    assert last.shape == (1, *every.shape[1:])
    assert float(last.amin()) == 0.0 and float(last.amax()) == 1.0  # its own colour fit
    if frames == 1:
        assert torch.equal(last, every)
    else:
        assert harness.rel(every[0], every[-1]) > 0.05  # frames differ


def test_a_kv_edit_bank_draws_its_background_and_its_kept_steps(flux):
    """KV-Edit keeps the background's tokens from the skipped step on: the edited (masked) half is black, the
    kept half drawn; step 0 (skipped) is refused with the steps it holds."""
    source = fh.latent(seed=4, size=8)
    mask = torch.zeros(1, 8, 8)
    mask[:, :, 4:] = 1.0  # edit the right half
    bank = kv_edit.invert(flux, source, fh.conditioning(seed=5), mask, 3, 1)
    image = flow_preview.preview(bank, "", -1)
    assert image.shape == (1, 64, 64, 3)
    assert float(image[:, :, 32:].abs().max()) == 0.0 and float(image[:, :, :32].std()) > 0.1
    with pytest.raises(PnPError, match=r"steps 1\.\.2"):
        flow_preview.preview(bank, "", 0)


def test_flux_preview_names_what_the_bank_holds(flux_bank):
    """A site, step or frame the bank lacks: an error naming what it holds."""
    with pytest.raises(PnPError, match=r"no features at 'single\.9\.v'; it holds double\.0\.k, double\.0\.v, "
                                       r"single\.1\.k"):
        PnPFluxFeaturePreview.execute(flux_bank, "single.9.v", 0, 0)
    with pytest.raises(PnPError, match=r"sampling steps 0\.\.1 .*step 2 is not among them"):
        PnPFluxFeaturePreview.execute(flux_bank, "", 2, 0)
    with pytest.raises(PnPError, match=r"1 latent frame \(0\.\.0\); frame 1"):
        PnPFluxFeaturePreview.execute(flux_bank, "", 0, 1)


def test_the_core_picture_spans_exactly_without_a_clamp():
    """The scaling alone puts every channel in [0, 1], touching both ends (no clamp hides values outside)."""
    features = torch.randn(2, 30, 7, generator=torch.Generator().manual_seed(0)) * 50 + 20
    rgb = core_preview.principal_components(features)
    assert float(rgb.amin(dim=(0, 1)).min()) == 0.0 and float(rgb.amax(dim=(0, 1)).max()) == 1.0
    assert torch.equal(rgb.amin(dim=(0, 1)), torch.zeros(3)) and torch.equal(rgb.amax(dim=(0, 1)), torch.ones(3))
