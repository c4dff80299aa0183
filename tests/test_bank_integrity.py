"""Bank files that cannot fool the pack (issue 27): every field of a loaded bank file is checked
against the others, from the header before any tensor is read (pnp_injection/bank_integrity.py and
each wing's layout); a checksum names damage as damage; values beyond any model's activations are
refused; a KV-Edit bank's mask and kept tokens must agree. Each file is loaded through the Load
Feature Bank nodes, as a user loads it."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import folder_paths
import flux_harness as fh
import harness
import hunyuan_reference
import family_reference
from comfyui_pnp.nodes.bank_files import PnPLoadFeatureBank, PnPSaveFeatureBank
from comfyui_pnp.nodes.flux import (PnPFluxFireFlowInversion, PnPFluxInversion, PnPFluxLoadBank, PnPFluxSampler,
                                    PnPFluxSaveBank)
from comfyui_pnp.nodes.flux_kv_edit import PnPFluxKVEditInversion, PnPFluxKVEditSampler
from comfyui_pnp.pnp_injection import PnPError, bank_integrity
from comfyui_pnp.pnp_injection.unet import bank as unet_banks
from comfyui_pnp.pnp_injection.unet import inversion as unet_inversion

DAMAGED = "is a damaged or edited bank file"
UNET_FIX = "Capture the source again and save the bank with PnP Save Feature Bank."
FLUX_FIX = "Invert the source again and save the bank with PnP Flux/Chroma/HunyuanVideo Save Feature Bank."
FLUX_LAYERS = "double.0:v; single.0:v; single.1:k@image"  # image-stream, all-token and image-token sites


def kv_mask():
    """The region to edit: rows 3-12, columns 5-11 of the 16x16 latent (not aligned to the tokens)."""
    mask = torch.zeros(1, 16, 16)
    mask[:, 3:13, 5:12] = 1
    return mask


@pytest.fixture(scope="module")
def banks():
    """One small bank of each kind, as the nodes make them: U-Net, RF-Solver, FireFlow, KV-Edit (Flux.1),
    HunyuanVideo and Flux.2."""
    sd15 = harness.make_model("sd15")
    trajectory = unet_inversion.invert(sd15, harness.latent(), harness.conditioning(seed=5), steps=4, evaluations=4)
    flux = fh.make_flux(seed=3, double=1, single=2)
    source, prompt = fh.latent(), fh.conditioning(seed=5)
    (rf,) = PnPFluxInversion.execute(flux, {"samples": source}, prompt, 4, 3, 1.0, "rf-solver-edit", "rf_solver",
                                     "simple", FLUX_LAYERS).result
    (small,) = PnPFluxInversion.execute(flux, {"samples": fh.latent(size=8)}, prompt, 2, 1, 1.0, "rf-solver-edit",
                                        "rf_solver", "simple", "double.0:v").result  # 16 image tokens, 64 wide
    (fire,) = PnPFluxFireFlowInversion.execute(flux, {"samples": source}, prompt, 4, 1, 1.0, "replace_v", "simple",
                                               "single.0-1:v").result
    (kv,) = PnPFluxKVEditInversion.execute(flux, {"samples": source}, prompt, 4, 1, 1.5, "simple", kv_mask()).result
    video = hunyuan_reference.make_hunyuan_video(double=1, single=2)
    (clip,) = PnPFluxInversion.execute(video, {"samples": hunyuan_reference.video_latent()},
                                       hunyuan_reference.conditioning_for(video, seed=5), 2, 1, 1.0, "rf-solver-edit",
                                       "rf_solver", "official", "single.0-1:v").result
    flux2 = family_reference.make_flux2(double=1, single=2)
    (f2,) = PnPFluxInversion.execute(flux2, {"samples": family_reference.latent_for(flux2)},
                                     family_reference.conditioning_for(flux2, seed=5), 2, 1, 1.0, "rf-solver-edit",
                                     "rf_solver", "simple", "double.0:v; single.0-1:v").result
    return dict(unet=(sd15, unet_banks.capture(sd15, trajectory)), rf=(flux, rf), small=(flux, small), fireflow=(flux, fire),
                kv=(flux, kv), video=(video, clip), flux2=(flux2, f2))


@pytest.fixture(scope="module")
def saved(banks, tmp_path_factory):
    """Each bank saved once by its node; returns the file's bytes by kind (tests copy them)."""
    out = tmp_path_factory.mktemp("saved")
    files = {}
    for kind, (_, bank) in banks.items():
        node = PnPSaveFeatureBank if kind == "unet" else PnPFluxSaveBank
        folder = out / kind
        folder.mkdir()
        old = folder_paths.get_output_directory()
        folder_paths.set_output_directory(str(folder))
        try:
            (shown,) = node.execute(bank, kind).ui["text"]
        finally:
            folder_paths.set_output_directory(old)
        files[kind] = (folder / shown).read_bytes()
    return files


def stage(saved, folders, kind, name=None, tensors=None, meta=None, resign=True, header=None) -> str:
    """A copy of the saved `kind` bank in the input folder, edited: `tensors(dict)` and `meta(dict)`
    edit the tensors and metadata (the checksum computed again unless `resign` is False, as other
    software or a deliberate edit would); `header(dict)` edits the raw JSON header (the data stay)."""
    _, inputs = folders
    suffix = ".pnpbank.safetensors" if kind == "unet" else ".pnpfluxbank.safetensors"
    path = inputs / f"{name or kind}{suffix}"
    path.write_bytes(saved[kind])
    if tensors or meta or not resign:
        harness.rewrite(path, tensors, meta, resign)
    if header:
        data = path.read_bytes()
        length = int.from_bytes(data[:8], "little")
        raw = json.loads(data[8:8 + length])
        header(raw)
        text = json.dumps(raw).encode()
        path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length:])
    return path.name


def load(kind, name):
    node = PnPLoadFeatureBank if kind == "unet" else PnPFluxLoadBank
    (bank,) = node.execute(name).result
    return bank


def refused(kind, name, *words):
    """The Load node refuses the file with "damaged or edited bank file", each of `words` and the fix."""
    with pytest.raises(PnPError) as err:
        load(kind, name)
    text = str(err.value)
    assert DAMAGED in text and text.endswith(UNET_FIX if kind == "unet" else FLUX_FIX), text
    for word in words:
        assert word in text, (word, text)
    return text


class NoTensorReads:
    """Fails the test if any tensor of a bank file is read (safetensors' get_tensor) while active."""

    def __init__(self, monkeypatch):
        from comfyui_pnp.pnp_injection import bank_file
        real = bank_file.safe_open
        self.reads = []

        class Counting:
            def __init__(inner, *args, **kwargs):
                inner.f = real(*args, **kwargs)

            def __enter__(inner):
                inner.f.__enter__()
                return inner

            def __exit__(inner, *exc):
                return inner.f.__exit__(*exc)

            def __getattr__(inner, name):  # metadata(), keys(), ...
                return getattr(inner.f, name)

            def get_tensor(inner, key):
                self.reads.append(key)
                return inner.f.get_tensor(key)
        monkeypatch.setattr(bank_file, "safe_open", Counting)


# ---------------------------------------------------------------- the header against the metadata

def test_a_table_whose_header_swaps_tokens_and_hidden_is_refused_before_any_tensor_is_read(banks, saved, folders,
                                                                                          monkeypatch):
    """The header of `features.double.0.v` (16 image tokens, 64 wide) swaps its tokens and hidden width:
    the same byte count. Fails if the file loads (it did, and sampling then failed blaming Flux Kontext's
    reference latents) or if any tensor is read before the refusal."""
    def swap(raw):
        raw["features.double.0.v"]["shape"] = [2, 1, 64, 16]
    name = stage(saved, folders, "small", header=swap)
    counting = NoTensorReads(monkeypatch)
    text = refused("small", name, "(`features.double.0.v`: its shape is [2, 1, 64, 16] where the metadata gives "
                                  "[2, 1, 16, 64]")
    assert counting.reads == [] and "Kontext" not in text


SPARSE_SCRIPT = r"""
import json, re, sys
sys.path.insert(0, sys.argv[1])
import host
host.setup(cpu=True)
import torch
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.flow import bank_file

def status(field):
    return int(re.search(field + r':\s+(\d+)', open('/proc/self/status').read()).group(1)) * 1024

bank_file.load(sys.argv[2])  # a good file first: every code path imported and warm
out = []
for path in sys.argv[3:]:
    open('/proc/self/clear_refs', 'w').write('5')  # the peak (VmHWM) starts again from here
    before = status('VmRSS')
    try:
        bank_file.load(path)
        message = None
    except PnPError as e:
        message = str(e)
    out.append([status('VmHWM') - before, message])
print(json.dumps(out))
"""


def sparse(good: bytes, path: Path, tokens: int, meta=None, drop=()) -> None:
    """`good` (a saved Flux bank) with every table declared with `tokens` image tokens, their data
    a hole in a sparse file (zeros that take no disk); `meta` edits the metadata, `drop` removes fields."""
    length = int.from_bytes(good[:8], "little")
    raw = json.loads(good[8:8 + length])
    data = good[8 + length:]
    metadata = raw.pop("__metadata__")
    metadata.update(meta or {})
    for key in drop:
        metadata.pop(key, None)
    small = {k: v for k, v in raw.items() if not k.startswith("features.")}
    header, position = {"__metadata__": metadata}, 0
    for key, entry in small.items():
        begin, end = entry["data_offsets"]
        header[key] = {**entry, "data_offsets": [position, position + end - begin]}
        position += end - begin
    body = b"".join(data[e["data_offsets"][0]:e["data_offsets"][1]] for e in small.values())
    for key, entry in raw.items():
        if key.startswith("features."):
            slots, rows, old, hidden = entry["shape"]
            count = tokens + (old - 64)  # the text tokens of all-token sites stay
            size = slots * rows * count * hidden * 4
            header[key] = {**entry, "shape": [slots, rows, count, hidden], "data_offsets": [position, position + size]}
            position += size
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + body)
        f.truncate(8 + len(text) + position)


def test_a_2_gib_sparse_file_is_refused_before_it_takes_memory(saved, tmp_path):
    """Sparse 2 GiB files whose tables are declared with 2 GiB worth of image tokens: with the saved
    metadata (tokens beyond the latent's 64), also as a file written before checksums (no checksum, no
    `image_tokens`),
    with `image_tokens` raised to match (a consistent header, refused by the checksum streamed from the
    file), and that without its checksum. Each refused costs under 10 MiB of peak memory (VmHWM, in a
    fresh process). Fails if a file loads or its tables are read before the refusal (2 GiB, then an
    error blaming Flux Kontext's reference latents)."""
    good = saved["rf"]
    path = tmp_path / "good.pnpfluxbank.safetensors"
    path.write_bytes(good)
    tokens = 2**31 // (3 * 6 * 64 * 4)  # three tables of 6 slots x 64 hidden, float32: 2 GiB
    cases = {"saved metadata": {}, "as written before checksums": {"drop": ("checksum", "image_tokens")},
             "consistent": {"meta": {"image_tokens": str(tokens)}},
             "consistent, no checksum": {"meta": {"image_tokens": str(tokens)}, "drop": ("checksum",)}}
    paths = []
    for i, case in enumerate(cases.values()):
        paths.append(tmp_path / f"sparse{i}.pnpfluxbank.safetensors")
        sparse(good, paths[-1], tokens, **case)
    assert os.path.getsize(paths[0]) > 2**31 and os.stat(paths[0]).st_blocks * 512 < 2**20  # sparse
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", SPARSE_SCRIPT, str(Path(__file__).parent), str(path),
                             *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    expected = ["`features.double.0.v`: its shape is", "`features.double.0.v`: its shape is", "`checksum`",
                "`checksum`: the field is missing"]
    for (growth, message), case, words in zip(measured, cases, expected):
        assert message is not None and DAMAGED in message and words in message, (case, message)
        assert growth < 10 * 2**20, (case, growth)
    print(f"peak memory growth per refusal: {[g for g, _ in measured]} bytes; "
          f"{time.perf_counter() - started:.1f} s in all")


# ---------------------------------------------------------------- the checksum

def test_damage_is_named_as_damage_by_the_checksum(saved, folders):
    """One value of a table changed on disk (the metadata as saved, shapes intact): refused, naming
    the checksum. Fails if the file loads (it sampled a slightly different edit, silently)."""
    for kind, key in (("unet", "residual.4"), ("rf", "features.single.0.v"), ("kv", "features.double.0.k")):
        def nudge(tensors, key=key):
            tensors[key] = tensors[key].clone()
            tensors[key].view(-1)[7] += 0.5
        name = stage(saved, folders, kind, tensors=nudge, resign=False)
        refused(kind, name, "(`checksum`: its tables or metadata are not what was saved")


def test_a_fireflow_bank_relabelled_euler_is_named_by_the_checksum(saved, folders):
    """FireFlow and euler banks have the same slots, so only the checksum tells a FireFlow bank relabelled
    euler (it would inject its midpoints at the steps' starts). Fails if it loads."""
    refused("fireflow", stage(saved, folders, "fireflow", meta=lambda m: m.update(solver="euler"), resign=False),
            "(`checksum`:")


@pytest.mark.parametrize("kind", ["unet", "rf", "kv"])
def test_files_written_before_the_checksum_still_load(banks, saved, folders, kind):
    """A file without the checksum field (as every file written before it) loads and holds the same
    tensors as the bank saved. Fails if such files are refused."""
    def before_checksums(m):
        m.pop("checksum")
        m.pop("image_tokens", None)
    name = stage(saved, folders, kind, meta=before_checksums, resign=False)
    loaded, bank = load(kind, name), banks[kind][1]
    for key, table in bank.tables.items():
        assert torch.equal(loaded.tables[key], table.cpu()), key


# ---------------------------------------------------------------- magnitudes

@pytest.mark.parametrize("kind, key", [("unet", "residual.4"), ("unet", "attention.5.0"),
                                       ("rf", "features.single.0.v"), ("fireflow", "features.single.1.v"),
                                       ("video", "features.single.0.v"), ("kv", "noise")])
def test_finite_but_absurd_values_are_refused(saved, folders, kind, key):
    """1e30 in a table (or the inverted noise): finite, so it loaded, and sampled a black image in
    silence on the U-Net, RF-Solver, FireFlow and HunyuanVideo paths. Fails if such a file loads or
    the message does not name the tensor and the bound."""
    def absurd(tensors):
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[3] = 1e30
    name = stage(saved, folders, kind, tensors=absurd)
    refused(kind, name, f"(`{key}`: it holds 1e+30, beyond the ±65504 that no model's activations or latents reach)")


def test_the_saved_banks_stay_far_within_the_bound(banks):
    """The banks the pack makes here hold values far below VALUE_BOUND (the README's margin is measured
    at full size): fails if a bound that small would refuse them."""
    for kind, (_, bank) in banks.items():
        tensors = [*bank.tables.values(), *([bank.start] if kind == "unet" else [bank.noise])]
        largest = max(float(t.abs().max()) for t in tensors if t.numel())
        assert largest < bank_integrity.VALUE_BOUND / 100, (kind, largest)


# ---------------------------------------------------------------- metadata against the tables

def test_metadata_that_contradicts_the_tables_is_refused(saved, folders):
    """Edits that loaded and edited differently, each with the checksum computed again (as a deliberate
    edit would): `first_step` changed (RF-Solver and KV-Edit banks), the solver relabelled euler (its
    slots then disagree with the tables), KV-Edit's kept tokens shifted by one, and its mask changed so
    that it no longer gives the kept tokens. Fails if any loads."""
    refused("rf", stage(saved, folders, "rf", meta=lambda m: m.update(first_step="1")), "(`first_step`: it is 1")
    refused("kv", stage(saved, folders, "kv", meta=lambda m: m.update(first_step="0")), "(`first_step`: it is 0 with 3")
    refused("rf", stage(saved, folders, "rf", meta=lambda m: m.update(solver="euler")),
            "(`features.double.0.v`: its shape is [6, 1, 64, 64] where the metadata gives [3, 1, 64, 64] (3 euler slots")

    def shift(tensors):
        tensors["tokens"] = tensors["tokens"] + 1
    refused("kv", stage(saved, folders, "kv", tensors=shift), "(`tokens`: the kept tokens (40) are not the background")

    def moved(tensors):
        tensors["mask"] = tensors["mask"].roll(2, dims=-1)
    refused("kv", stage(saved, folders, "kv", tensors=moved), "(`tokens`: the kept tokens")


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.update(mask=t["mask"][..., :4, :4].contiguous()), "(`mask`: its shape is [1, 1, 4, 4] where the "
                                                                   "metadata gives [1, 1, 16, 16]"),
    (lambda t: t.update(mask=t["mask"][..., :8, :1].contiguous()), "(`mask`: its shape is [1, 1, 8, 1]"),
    (lambda t: t.update(mask=torch.zeros_like(t["mask"])), "(`mask`: KV-Edit's mask is black everywhere"),
    (lambda t: t.update(mask=t["mask"] * 2), "(`mask`: KV-Edit's mask holds values other than 0 and 1"),
    (lambda t: t.update(mask=t["mask"] - 1), "(`mask`: KV-Edit's mask holds values other than 0 and 1"),
], ids=["4x4", "8x1", "zeros", "twos", "minus-one"])
def test_a_kv_edit_banks_mask_is_checked(saved, folders, edit, words):
    """A KV-Edit bank file's mask of another shape (a raw RuntimeError, or the source returned in
    silence), all zeros (the source in silence) or of values 2 or -1 (a different edit in silence):
    refused when loaded. Fails if any loads."""
    refused("kv", stage(saved, folders, "kv", tensors=edit), words)


def test_a_good_kv_bank_loads_and_edits_as_in_memory(banks, saved, folders):
    """The checks refuse nothing the pack wrote: the KV-Edit bank loads and edits bit for bit as in
    memory. Fails if a check rejects it."""
    model, bank = banks["kv"]
    loaded = load("kv", stage(saved, folders, "kv"))
    target = fh.conditioning(seed=1)
    (a,) = PnPFluxKVEditSampler.execute(model, loaded, target, 5.5, 1.0).result
    (b,) = PnPFluxKVEditSampler.execute(model, bank, target, 5.5, 1.0).result
    assert torch.equal(a["samples"], b["samples"])


# ---------------------------------------------------------------- family patch sizes

def test_flux2_banks_are_sized_by_its_one_cell_tokens(banks, saved, folders):
    """Flux.2's image tokens are latent cells (patch size 1): its bank loads and samples as in memory,
    and a table cut to the count a 2x2 patch would give (16 image tokens instead of 64) is refused.
    Fails if the cut file loads (the old check assumed 2x2 patches on every family) or the good one
    is refused."""
    model, bank = banks["flux2"]
    loaded = load("flux2", stage(saved, folders, "flux2"))
    target = family_reference.conditioning_for(model, seed=1)
    (a,) = PnPFluxSampler.execute(model, loaded, target, 5.0, 1).result
    (b,) = PnPFluxSampler.execute(model, bank, target, 5.0, 1).result
    assert torch.equal(a["samples"], b["samples"])

    def cut(tensors):
        table = tensors["features.double.0.v"]
        tensors["features.double.0.v"] = table[:, :, :16].contiguous()
    refused("flux2", stage(saved, folders, "flux2", name="cut", tensors=cut),
            "(`features.double.0.v`: its shape is [2, 1, 16, 64] where the metadata gives [2, 1, 64, 64]")


# ---------------------------------------------------------------- the hostile corpus

def corpus():
    """(bank kind, what is edited, stage keywords, words of the refusal): files crafted from real saved
    banks by editing their headers, shapes, dtypes, metadata and values. Unless marked, the checksum is
    computed again, so that the check behind it is the one that refuses."""
    def poke(key, value, index=0):
        def edit(t):
            t[key] = t[key].clone()
            t[key].view(-1)[index] = value
        return edit

    def declare(key, **fields):
        return lambda raw: raw[key].update(fields)

    def meta(**fields):
        return lambda m: m.update(fields)

    def drop(field):
        return lambda m: m.pop(field)

    unet, rf, kv = "unet", "rf", "kv"
    return [
        # headers: declared dtypes and shapes of the same byte count, a header longer than the file
        (unet, "dtype F32 -> I32 (same bytes)", dict(header=declare("residual.4", dtype="I32")),
         "(`residual.4`: it is stored as int32, not as float32, float16 or bfloat16)"),
        (rf, "dtype F32 -> F16, shape doubled", dict(header=lambda raw: raw["noise"].update(
            dtype="F16", shape=[2, *raw["noise"]["shape"][1:]])), "(`noise`: its shape is [2, 16, 16, 16]"),
        (rf, "tokens x2, slots / 2", dict(header=lambda raw: raw["features.double.0.v"].update(
            shape=[3, 1, 128, 64])), "(`features.double.0.v`: its shape is [3, 1, 128, 64]"),
        (unet, "attention tokens x4, channels / 4", dict(header=lambda raw: raw["attention.5.0"].update(
            shape=[s * 4 if i == 2 else s // 4 if i == 3 else s for i, s in enumerate(raw["attention.5.0"]["shape"])])),
         "(`attention.5.0`: its shape is"),
        (kv, "tokens declared I32", dict(tensors=lambda t: t.update(tokens=t["tokens"].to(torch.int32))),
         "(`tokens`: it is stored as int32, not as int64)"),
        # shapes
        (rf, "a table cut to 7 tokens", dict(tensors=lambda t: t.update({"features.single.1.k": t[
            "features.single.1.k"][:, :, :7].contiguous()})), "(`features.single.1.k`: its shape is [6, 1, 7, 64]"),
        (rf, "an extra tensor", dict(tensors=lambda t: t.update(extra=torch.zeros(3))),
         "(`extra`: the metadata gives no such tensor)"),
        (rf, "path one step short", dict(tensors=lambda t: t.update(path=t["path"][1:].contiguous())), "(`path`:"),
        (unet, "start of 2 rows", dict(tensors=lambda t: t.update(start=t["start"].repeat(2, 1, 1, 1))),
         "(`start`: its shape is [2, 4, 16, 16] where the metadata gives [1, 4, 16, 16]"),
        (kv, "kept tokens beyond the latent", dict(tensors=lambda t: t.update(tokens=torch.arange(70))),
         "(`tokens`: its shape is [70], not the indices of at most the latent's 64 tokens)"),
        # metadata
        (unet, "steps 9", dict(meta=meta(steps="9")), "(`steps`: it is 9 but the schedule (`sigmas`) has 4 steps)"),
        (unet, "feature steps beyond the schedule", dict(meta=meta(feature_step_count="5")),
         "(`feature_step_count`: it is '5', not a whole number from 0 to 4)"),
        (unet, "latent_shape not JSON", dict(meta=meta(latent_shape="[1, 4,")), "(`latent_shape`: it is '[1, 4,', not JSON)"),
        (unet, "latent of 9 channels", dict(meta=meta(latent_shape="[1, 9, 16, 16]")), "(`latent_shape`: it is [1, 9, 16, 16]"),
        (unet, "layers dropped", dict(meta=drop("layers")), "(`layers`: the metadata field is missing)"),
        (unet, "architecture with a weight shape less", dict(meta=lambda m: m.update(
            architecture=m["architecture"].rsplit(", (", 1)[0] + "]")), "(`architecture`: it gives 8 weight shapes"),
        (rf, "steps_kept 5 of 4", dict(meta=meta(steps_kept="5")), "(`steps_kept`: it is '5', not a whole number from 0 to 4)"),
        (rf, "text_tokens 9", dict(meta=meta(text_tokens="9")), "(`features.single.0.v`: its shape is [6, 1, 72, 64] "
                                                                "where the metadata gives [6, 1, 73, 64]"),
        (rf, "solver unknown", dict(meta=meta(solver="dpm")), "(`solver`: it is 'dpm', not one of"),
        (rf, "architecture of another family", dict(meta=meta(architecture="sd3:1x2:hidden64:heads2")),
         "(`architecture`: it is 'sd3:1x2:hidden64:heads2', not a supported family's"),
        (rf, "hidden 128", dict(meta=lambda m: m.update(architecture=m["architecture"].replace("hidden64", "hidden128"))),
         "where the metadata gives [6, 1, 64, 128]"),
        (rf, "a block the architecture lacks", dict(meta=meta(layers="double.0:v; single.0:v; single.5:k@image")),
         "(`layers`: it names single block 5, which the architecture (1 double, 2 single blocks) does not have)"),
        (rf, "layers unreadable", dict(meta=meta(layers="single.x:v")), "(`layers`: Cannot read the Flux layer set"),
        (rf, "latent of 2 rows", dict(meta=meta(latent_shape="[2, 16, 16, 16]")), "(`noise`: its shape is [1, 16, 16, 16]"),
        (rf, "image_tokens 63", dict(meta=meta(image_tokens="63")), "(`image_tokens`: it is '63', not a whole number from 64"),
        (rf, "image_tokens without a checksum", dict(meta=drop("checksum"), resign=False),
         "(`checksum`: the field is missing, though the file records"),
        (kv, "solver fireflow", dict(meta=meta(solver="fireflow")), "(`solver`: it is 'fireflow', but KV-Edit inverts with euler"),
        (kv, "first_step 2", dict(meta=meta(first_step="2")), "(`first_step`: it is 2 with 3 kept steps"),
        (kv, "mask dropped", dict(tensors=lambda t: t.pop("mask")), "(`mask`: the tensor is missing)"),
        # values
        (unet, "NaN in the start", dict(tensors=poke("start", float("nan"))), "(`start`: it holds NaN or infinite values)"),
        (unet, "-1e6 in the path", dict(tensors=poke("path", -1e6)), "(`path`: it holds -1e+06, beyond the ±65504"),
        (rf, "inf in a table", dict(tensors=poke("features.double.0.v", float("inf"))),
         "(`features.double.0.v`: it holds NaN or infinite values)"),
        (rf, "sigmas not from 1", dict(tensors=lambda t: t.update(sigmas=t["sigmas"] * 0.5)),
         "(`sigmas`: the schedule does not fall strictly from 1.0 to 0"),
        (kv, "a kept token repeated", dict(tensors=poke("tokens", 0, 1)), "(`tokens`: the kept tokens (40) are not"),
        (kv, "mask of 0.5", dict(tensors=lambda t: t.update(mask=t["mask"] * 0.5)), "values other than 0 and 1"),
        # the checksum itself
        (rf, "one metadata field changed, not re-signed", dict(meta=meta(text_tokens="8 "), resign=False),
         "(`text_tokens`: it is '8 ', not a whole number"),
        (unet, "one sigma changed, not re-signed", dict(tensors=poke("sigmas", 14.0), resign=False), "(`checksum`:"),
    ]


def test_the_hostile_bank_file_corpus_is_refused(saved, folders):
    """Every file of the corpus (headers, shapes, dtypes, metadata and values edited from real saved
    banks) is refused by its Load node with "damaged or edited bank file", the field, what is wrong and
    the fix, in well under a second each. Fails if any loads, gets a raw error, or names another field."""
    started = time.perf_counter()
    for kind, what, edits, words in corpus():
        name = stage(saved, folders, kind, name=re.sub(r"\W+", "_", what), **edits)
        refused(kind, name, words)
    assert time.perf_counter() - started < 20
