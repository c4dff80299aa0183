"""PnP Feature Preview: principal components of captured features as a picture."""
import pytest
import torch

import harness
from comfyui_pnp.nodes.preview import PnPFeaturePreview
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, preview


@pytest.fixture(scope="module")
def bank():
    model = harness.make_model("sd15")
    frames = torch.cat([harness.latent(seed=1), harness.latent(seed=2)])
    trajectory = inversion.invert(model, frames, harness.conditioning(seed=5), steps=5, evaluations=5)
    return banks.capture(model, trajectory)


@pytest.mark.parametrize("features, block", [("resblock", -1), ("attention input", 9), ("attention input", 4)])
def test_preview_is_an_image_of_the_features(bank, features, block):
    (image,) = PnPFeaturePreview.execute(bank, 1, features, block, 0).result
    assert image.shape == (2, 16, 16, 3)  # one per source row, at the latent size
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert float(image.std()) > 0.1  # a picture, not a flat field
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
