"""Bank files: safetensors with versioned metadata, only under ComfyUI's output/input folders."""
import json

import pytest
import torch
from safetensors import safe_open

import harness
from harness import rewrite, save_and_stage
from comfyui_pnp.nodes import NODE_IDS, NODES
from comfyui_pnp.nodes.bank_files import PnPLoadFeatureBank, PnPSaveFeatureBank
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, sampling


@pytest.fixture(scope="module")
def captured():
    model = harness.make_model("sd15")
    empty = harness.conditioning(seed=5)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=5, evaluations=5)
    return model, empty, banks.capture(model, trajectory)


def test_node_ids_list_matches_the_registered_nodes():
    assert NODE_IDS == [n.GET_SCHEMA().node_id for n in NODES]


def test_a_loaded_bank_gives_bit_identical_results(captured, folders):
    model, empty, bank = captured
    saved, staged = save_and_stage(bank, folders)
    assert saved.parent == folders[0] and saved.name.endswith("_.pnpbank.safetensors")
    with safe_open(str(saved), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pnp-feature-bank" and meta["version"] == "2"
    assert json.loads(meta["latent_shape"]) == [1, 4, 16, 16]
    assert meta["architecture"] == bank.architecture and meta["feature_step_count"] == "4"
    assert json.loads(meta["layers"])["resblocks"] == [4]

    (loaded,) = PnPLoadFeatureBank.execute(staged.name).result
    target = harness.conditioning(seed=1)
    edited = sampling.pnp_sample(model, loaded, target, empty)
    assert torch.equal(edited, sampling.pnp_sample(model, bank, target, empty))
    assert harness.rel(edited, sampling.pnp_sample(model, loaded, target, empty, 7.5, 0.0, 0.0)) > 0.10  # injected


def test_saved_banks_are_listed_from_the_output_folder_too(captured, folders):
    _, _, bank = captured
    saved, staged = save_and_stage(bank, folders, "pnp/bank")
    listed = PnPLoadFeatureBank.GET_SCHEMA().inputs[0].options
    assert staged.name in listed and "pnp/" + saved.name + " [output]" in listed
    (loaded,) = PnPLoadFeatureBank.execute("pnp/" + saved.name + " [output]").result
    assert torch.equal(loaded.residual[4], bank.residual[4].cpu())
    with pytest.raises(PnPError, match="outside ComfyUI's output folder"):
        PnPLoadFeatureBank.execute("../x.safetensors [output]")


def test_only_bank_files_are_listed_and_listing_opens_no_file(captured, folders, monkeypatch):
    """Checkpoints and other safetensors in the input and output folders are never offered as
    banks, and listing reads names only: it fails if a file is opened or a non-bank is listed."""
    _, inp = folders
    _, _, bank = captured
    save_and_stage(bank, folders)
    (inp / "models").mkdir()
    for i in range(500):
        (inp / "models" / f"checkpoint_{i}.safetensors").write_bytes(b"x")
    (inp / "image.png").write_bytes(b"x")
    import builtins
    import io as stdio
    opened = []
    monkeypatch.setattr(builtins, "open", lambda *a, **k: opened.append(a) or stdio.BytesIO())
    listed = PnPLoadFeatureBank.GET_SCHEMA().inputs[0].options
    monkeypatch.undo()
    assert opened == []
    assert listed and all(name.split(" [")[0].endswith(".pnpbank.safetensors") for name in listed), listed


def test_the_header_is_checked_before_any_tensor_is_read(captured, folders, monkeypatch):
    """A file of another format or version is refused from its header alone."""
    from safetensors import safe_open as real_open

    import comfyui_pnp.pnp_injection.unet.bank_file as bank_file
    _, _, bank = captured
    _, staged = save_and_stage(bank, folders)
    rewrite(staged, edit_meta=lambda m: m.update(version="1"))
    reads = []

    class Counting:
        def __init__(self, *args, **kwargs):
            self.inner = real_open(*args, **kwargs)

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def metadata(self):
            return self.f.metadata()

        def keys(self):
            return self.f.keys()

        def get_tensor(self, key):
            reads.append(key)
            return self.f.get_tensor(key)

    monkeypatch.setattr("safetensors.safe_open", Counting)
    with pytest.raises(PnPError, match="version '1'"):
        bank_file.load(staged)
    assert reads == []


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "may be truncated"),
    (lambda p: p.write_bytes(b"not a bank at all"), "may be truncated"),
    (lambda p: rewrite(p, edit_meta=lambda m: m.update(version="7")), "version '7'; this pack reads version 2"),
    (lambda p: rewrite(p, edit_meta=lambda m: m.pop("format")), "is not a PnP U-Net feature bank file"),
    (lambda p: rewrite(p, edit_tensors=lambda t: t.update({"residual.4": t["residual.4"][:2]})),
     r"is a damaged or edited bank file \(`residual.4`: its shape is \[2, 1, 64, 4, 4\] where the metadata gives "
     r"\[4, 1, 64, 4, 4\]"),
    (lambda p: rewrite(p, edit_tensors=lambda t: t.pop("attention.5.0")),
     r"is a damaged or edited bank file \(`attention.5.0`: the tensor is missing\)"),
], ids=["truncated", "garbage", "unknown-version", "not-a-bank", "tampered-shape", "missing-tensor"])
def test_bad_bank_files_get_a_clear_error(captured, folders, damage, message):
    _, _, bank = captured
    _, staged = save_and_stage(bank, folders)
    damage(staged)
    with pytest.raises(PnPError, match=message):
        PnPLoadFeatureBank.execute(staged.name)


@pytest.mark.parametrize("name", ["../secret.safetensors", "/etc/passwd", "a/../../b.safetensors"])
def test_bank_names_that_leave_the_input_folder_are_refused(folders, name):
    message = PnPLoadFeatureBank.validate_inputs(name)
    assert isinstance(message, str) and "outside ComfyUI's input folder" in message
    with pytest.raises(PnPError, match="outside ComfyUI's input folder"):
        PnPLoadFeatureBank.execute(name)


def test_saving_outside_the_output_folder_is_refused_and_writes_nothing(captured, folders, tmp_path):
    _, _, bank = captured
    before = set(tmp_path.rglob("*"))
    with pytest.raises(PnPError, match="must stay inside ComfyUI's output folder"):
        PnPSaveFeatureBank.execute(bank, "../escape/bank")
    assert set(tmp_path.rglob("*")) == before


UNPICKLED = []


class Trap:
    """Unpickling this object records it: a bank reader must never do that."""

    def __reduce__(self):
        return (UNPICKLED.append, ("unpickled",))


def test_bank_files_are_never_unpickled(folders):
    _, inp = folders
    torch.save({"sigmas": torch.zeros(3), "trap": Trap()}, inp / "pickled.safetensors")
    with pytest.raises(PnPError, match="not a readable U-Net feature bank"):
        PnPLoadFeatureBank.execute("pickled.safetensors")
    assert UNPICKLED == []
