"""Nothing a user types, saves or drops into a folder can hang the host: layer texts are read
in linear time under a length cap, ranges are checked before they are expanded, bank listings
never follow linked folders and do not grow with unrelated files, and saves are PnPErrors
for impossible names, never hidden, never outside the output folder, never overwritten."""
import os
import threading
import time
import tracemalloc

import pytest
import torch
from safetensors import safe_open

from comfyui_pnp.nodes import bank_files as bank_nodes
from comfyui_pnp.nodes.bank_files import PnPLoadFeatureBank, PnPSaveFeatureBank
from comfyui_pnp.nodes.flux import PnPFluxLoadBank, PnPFluxSaveBank
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection import layer_text
from comfyui_pnp.pnp_injection.flow import bank as flux_banks
from comfyui_pnp.pnp_injection.flow import layers as flux_layers
from comfyui_pnp.pnp_injection.unet import bank as unet_banks
from comfyui_pnp.pnp_injection.unet import layers as unet_layers

UNET_SUFFIX = ".pnpbank.safetensors"
FLUX_SUFFIX = ".pnpfluxbank.safetensors"
PARSERS = {"unet": unet_layers.parse_custom, "flux": flux_layers.parse_custom}


def timed(fn):
    """(seconds, the PnPError's text) of a call that must be refused."""
    start = time.perf_counter()
    with pytest.raises(PnPError) as caught:
        fn()
    return time.perf_counter() - start, str(caught.value)


# --- layer texts -----------------------------------------------------------------------------

@pytest.mark.parametrize("wing", PARSERS)
def test_a_huge_layer_text_is_refused_at_once_naming_the_cap(wing):
    """Fails if a 100,000-character text is parsed (a backtracking pattern took 19 s on 2,511
    characters) instead of being refused in under 0.5 s with the cap and the fix."""
    seconds, message = timed(lambda: PARSERS[wing]("single.1:v" + " " * 99_989 + "x"))
    assert seconds < 0.5, seconds
    assert "100,000 characters long" in message and "up to 2,000 characters" in message
    assert "Shorten it: name blocks by ranges" in message


@pytest.mark.parametrize("text", ["single.1:v" + " " * 1_980 + "x", "single." + "1," * 990 + "x:v",
                                  "single.1:" + "v," * 990 + "x", "single.1:v@" + " " * 1_980 + "x"])
def test_flux_texts_under_the_cap_are_read_in_linear_time(text):
    """Fails if a text just under the cap takes more than 0.1 s to refuse, or is accepted: the
    old `_CLAUSE` pattern backtracked in cubic time on the first (35 s on this machine)."""
    seconds, message = timed(lambda: flux_layers.parse_custom(text))
    assert seconds < 0.1, seconds
    assert "Cannot read the Flux layer set" in message and "Example: 'double.0,1,17,18:k,v" in message


@pytest.mark.parametrize("text", ["res:output." + " " * 1_980 + "x", "attn:output.4@" + " " * 1_980 + "x",
                                  "res:output." + "1," * 990 + "x"])
def test_unet_texts_under_the_cap_are_read_in_linear_time(text):
    """Fails if the U-Net parser takes more than 0.1 s on a text under the cap, or accepts it
    (its old `(.+?)\\s*$` was quadratic: harmless under the cap, a stall without it)."""
    seconds, message = timed(lambda: unet_layers.parse_custom(text))
    assert seconds < 0.1, seconds
    assert "Write it as 'res:output.4; attn:output.4-11@0'" in message


@pytest.mark.parametrize("wing, text, expected", [
    ("unet", "attn:output.4-999999", "Layer number 999999 is beyond 999"),
    ("unet", "res:output.0-999999999999999999999", "is beyond 999"),
    ("unet", "attn:output.0-999@0-999", "names 1,000,000 layers; at most 1,000 are read"),
    ("unet", "res:output.11-4", "The range '11-4' runs backwards: write the lower block first, as in '4-11'"),
    ("flux", "single.0-999999:v", "Layer number 999999 is beyond 999"),
    ("flux", "single.0-999:v; " * 100, "names 100,000 layers; at most 1,000 are read"),
    ("flux", "single.37-20:v", "The range '37-20' runs backwards"),
])
def test_huge_or_backward_ranges_are_refused_before_expanding(wing, text, expected):
    """Fails if a range is expanded before it is checked (`attn:output.4-999999` allocated
    100 MB, `single.0-999999:v` took 3.7 s): refused in under 0.05 s, allocating under 1 MB,
    with a message that names the bound."""
    tracemalloc.start()
    try:
        seconds, message = timed(lambda: PARSERS[wing](text))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds < 0.05 and peak < 1_000_000, (seconds, peak)
    assert expected in message


def test_valid_texts_read_as_before():
    """Fails if the plain-splitting parsers read a valid text otherwise than the grammar says."""
    assert unet_layers.parse_custom("res:output.4; attn:output.4-11@0") == unet_layers.PAPER_SD
    assert unet_layers.parse_custom(" attn : output. 4 - 5 @ 0,1 ") == unet_layers.LayerSet(
        (), ((4, 0), (4, 1), (5, 0), (5, 1)))
    assert unet_layers.parse_custom("attn:output.0-2@*") == unet_layers.LayerSet((), ((0, -1), (1, -1), (2, -1)))
    for preset in flux_layers.PRESETS.values():
        assert flux_layers.parse_custom(preset.describe()) == preset
    assert flux_layers.parse_custom(" single . 20 - 37 : v , ") == flux_layers.PRESETS["rf-solver-edit"]
    assert flux_layers.parse_custom("double.0,1,17,18:v,k; single.6,9,34,35,37:k,v@image") == \
        flux_layers.PRESETS["stable-flow"]
    # the longest useful Flux text (every site, every tensor) is far under the cap
    everything = "; ".join([f"double.{b}:q,k,v" for b in range(19)] + [f"single.{b}:q,k,v@image" for b in range(38)])
    assert len(everything) < layer_text.MAX_LENGTH and len(flux_layers.parse_custom(everything).keys()) == 57 * 3


# --- listing banks ----------------------------------------------------------------------------

def test_listing_skips_linked_folders_and_does_not_grow_with_unrelated_files(folders):
    """Fails if a loader's schema follows `input/a -> input` and `input/b -> input` (ComfyUI
    never finished loading; each bank was listed 41 times), lists a bank twice, or takes 0.2 s
    or more with 20,000 unrelated files in output/ (2 s per call before)."""
    output, inputs = folders
    (inputs / "a").symlink_to(inputs, target_is_directory=True)
    (inputs / "b").symlink_to(inputs, target_is_directory=True)
    (inputs / "sub").mkdir()
    for name in ("top" + UNET_SUFFIX, "sub/deep" + UNET_SUFFIX, "top" + FLUX_SUFFIX):
        (inputs / name).write_bytes(b"x")
    (output / f"saved{UNET_SUFFIX}").write_bytes(b"x")
    for i in range(20_000):
        (output / f"image_{i:05}_.png").write_bytes(b"")
    for _ in range(3):  # built on pack load, on every /object_info and every /prompt with a loader
        start = time.perf_counter()
        unet = PnPLoadFeatureBank.define_schema().inputs[0].options
        flux = PnPFluxLoadBank.define_schema().inputs[0].options
        assert time.perf_counter() - start < 0.2
    assert unet == [os.path.join("sub", "deep" + UNET_SUFFIX), "top" + UNET_SUFFIX, f"saved{UNET_SUFFIX} [output]"]
    assert flux == ["top" + FLUX_SUFFIX]


def test_linked_files_are_listed_only_where_the_loader_takes_them(folders, tmp_path):
    """Fails if the list offers a linked bank file that `input_path` then refuses (one that
    resolves outside the input folder), or hides one that resolves inside it."""
    _, inputs = folders
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"far{UNET_SUFFIX}").write_bytes(b"x")
    (inputs / f"near{UNET_SUFFIX}").write_bytes(b"x")
    (inputs / f"far{UNET_SUFFIX}").symlink_to(elsewhere / f"far{UNET_SUFFIX}")
    (inputs / f"alias{UNET_SUFFIX}").symlink_to(inputs / f"near{UNET_SUFFIX}")
    listed = bank_nodes.bank_files()
    assert listed == [f"alias{UNET_SUFFIX}", f"near{UNET_SUFFIX}"]
    for name in listed:
        assert bank_nodes.input_path(name)
    with pytest.raises(PnPError, match="outside ComfyUI's input folder"):
        bank_nodes.input_path(f"far{UNET_SUFFIX}")


def test_only_regular_files_are_listed(folders):
    """A FIFO (or another special file) named like a bank is not offered: reading it would block the
    loader, and the loader refuses it anyway. Fails if the list offers it."""
    _, inputs = folders
    os.mkfifo(inputs / f"pipe{UNET_SUFFIX}")
    os.mkfifo(inputs / f"pipe{FLUX_SUFFIX}")
    (inputs / f"real{UNET_SUFFIX}").write_bytes(b"x")
    (inputs / f"link{UNET_SUFFIX}").symlink_to(inputs / f"pipe{UNET_SUFFIX}")
    assert PnPLoadFeatureBank.define_schema().inputs[0].options == [f"real{UNET_SUFFIX}"]
    assert PnPFluxLoadBank.define_schema().inputs[0].options == []
    with pytest.raises(PnPError, match="No bank file"):
        PnPLoadFeatureBank.execute(f"pipe{UNET_SUFFIX}")


def test_a_cached_listing_sees_new_banks(folders, monkeypatch):
    """Fails if the listing, reused while the folders are unchanged, misses a bank saved since
    or keeps one deleted since."""
    _, inputs = folders
    monkeypatch.setattr(bank_nodes, "_SETTLED_NS", -10**12)  # cache even a folder changed just now
    (inputs / "sub").mkdir()
    assert bank_nodes.bank_files() == []
    first = inputs / "sub" / f"one{UNET_SUFFIX}"
    first.write_bytes(b"x")
    os.utime(inputs / "sub", ns=(1, 1))  # a new mtime, even on a coarse clock
    assert bank_nodes.bank_files() == [os.path.join("sub", f"one{UNET_SUFFIX}")]
    first.unlink()
    os.utime(inputs / "sub", ns=(2, 2))
    assert bank_nodes.bank_files() == []


def test_a_listing_of_a_folder_changed_just_now_is_not_trusted_for_long(folders, monkeypatch):
    """A file can appear within the same tick of a coarse clock as the listing (FAT: 2 s), so
    the folder's time does not change. Fails if such a listing is reused past its short expiry."""
    _, inputs = folders
    monkeypatch.setattr(bank_nodes, "_UNSETTLED_REUSE_NS", 0)
    before = os.stat(inputs)
    assert bank_nodes.bank_files() == []
    (inputs / f"late{UNET_SUFFIX}").write_bytes(b"x")
    os.utime(inputs, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same tick: no visible change
    assert bank_nodes.bank_files() == [f"late{UNET_SUFFIX}"]


# --- saving banks -----------------------------------------------------------------------------

def unet_bank(value: float = 0.0):
    """A tiny U-Net bank whose `start` holds `value` (to tell saved files apart)."""
    return unet_banks.FeatureBank(sigmas=torch.linspace(1, 0, 3), start=torch.full((1, 4, 2, 2), value),
                                  residual={4: torch.zeros(1, 1, 4, 2, 2)}, attention={},
                                  layers=unet_layers.LayerSet((4,), ()), architecture="test")


def flux_bank(value: float = 0.0):
    """A tiny Flux bank whose `noise` holds `value`."""
    return flux_banks.FeatureBank(sigmas=torch.linspace(1, 0, 3), noise=torch.full((1, 16, 2, 2), value),
                                  tables={"single.20.v": torch.zeros(1, 1, 4, 8)},
                                  layers=flux_layers.parse_custom("single.20:v"), solver="euler", steps_kept=1,
                                  text_tokens=2, architecture="test")


def saved(node, bank, prefix) -> str:
    (shown,) = node.execute(bank, prefix).ui["text"]
    return shown


def files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())


@pytest.mark.parametrize("prefix, expected", [
    ("bank\0x", "contains a NUL character, which no file name may hold: remove it"),
    ("b" * 300, "Shorten the prefix's last part to at most 228 characters"),
    ("d" * 300 + "/bank", "File name too long. Shorten its folder names"),
])
def test_impossible_prefixes_are_pnp_errors(folders, prefix, expected):
    """Fails on a raw `ValueError: embedded null byte` or `OSError: File name too long`, or if
    anything is written."""
    output, _ = folders
    with pytest.raises(PnPError, match=expected):
        PnPSaveFeatureBank.execute(unet_bank(), prefix)
    assert files(output) == []


def test_the_longest_names_that_fit_save_and_leave_no_temporary_file(folders):
    """Fails if a prefix of 221-228 characters fails because of a temporary suffix
    (`.partial` made the name too long), if the advice in the too-long error is wrong, or if a
    temporary file is left behind."""
    output, _ = folders
    shown = [saved(PnPSaveFeatureBank, unet_bank(), "b" * n) for n in range(221, 229)]
    assert files(output) == sorted(shown) and all(len(name) <= 255 for name in shown)
    assert all(name.endswith(f"_00001_{UNET_SUFFIX}") for name in shown)
    with pytest.raises(PnPError, match="at most 228 characters"):
        PnPSaveFeatureBank.execute(unet_bank(), "b" * 229)
    assert saved(PnPFluxSaveBank, flux_bank(), "f" * 224).endswith(f"_00001_{FLUX_SUFFIX}")  # 224 + 7 + 24 = 255


@pytest.mark.parametrize("prefix", ["", ".", "..", "banks/", " . "])
def test_empty_and_dot_prefixes_get_the_default_name(folders, prefix):
    """Fails if a save without a name of its own makes a hidden file (`._00001_...`)."""
    output, _ = folders
    shown = saved(PnPSaveFeatureBank, unet_bank(), prefix)
    folder = "banks/" if prefix == "banks/" else ""
    assert shown.replace(os.sep, "/") == f"{folder}pnp_bank_00001_{UNET_SUFFIX}"
    flux = saved(PnPFluxSaveBank, flux_bank(), prefix)
    assert flux.replace(os.sep, "/") == f"{folder}pnp_flux_bank_00001_{FLUX_SUFFIX}"
    assert not [name for name in files(output) if name.split("/")[-1].startswith(".")]


def test_saves_and_loads_agree_on_linked_folders(folders, tmp_path):
    """Fails if `ext/x` with `output/ext -> elsewhere` writes outside the output folder (where
    the loader then refused the file): the save is refused as the load is, and nothing is
    written there."""
    output, _ = folders
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (output / "ext").symlink_to(elsewhere, target_is_directory=True)
    for prefix in ("ext/x", "ext/new/x"):
        with pytest.raises(PnPError, match="must stay inside ComfyUI's output folder, links resolved"):
            PnPSaveFeatureBank.execute(unet_bank(), prefix)
    assert list(elsewhere.iterdir()) == []
    (elsewhere / f"x_00001_{UNET_SUFFIX}").write_bytes(b"x")
    with pytest.raises(PnPError, match="outside ComfyUI's output folder"):
        bank_nodes.input_path(f"ext/x_00001_{UNET_SUFFIX} [output]")
    assert saved(PnPSaveFeatureBank, unet_bank(), "real/x")  # a real subfolder is fine


SAVERS = {"unet": (PnPSaveFeatureBank, unet_bank, "start"), "flux": (PnPFluxSaveBank, flux_bank, "noise")}


@pytest.mark.parametrize("wing", SAVERS)
def test_concurrent_saves_to_one_prefix_never_overwrite(folders, monkeypatch, wing):
    """Two savers (as two ComfyUI instances on one output folder) save to one prefix at once,
    both first handed the same free name, through each wing's Save Feature Bank node. The name is
    patched where that node's `execute` looks it up (its globals, not the module that defines
    `output_path`: a node that imported it by name would escape a patch there), and every save
    must pass through the patch and saves must collide, so both wings' nodes really race. Fails if a save overwrites another or shares its temporary file (banks lost), if two
    saves report the same file, if a save fails (a node that does not take the next name), or if
    a wing's saves bypass the patched name."""
    node, make_bank, key = SAVERS[wing]
    output, _ = folders
    rounds, savers = 15, 2
    lookup = node.execute.__func__.__globals__  # the globals `execute` reads `output_path` from
    assert "output_path" in lookup, f"{node.__name__}.execute does not take its file name from output_path"
    real_output_path = lookup["output_path"]
    barrier = threading.Barrier(savers)

    asked = []

    def same_name_first(prefix, suffix, default, attempt=0):
        asked.append(attempt)
        found = real_output_path(prefix, suffix, default, attempt)
        if attempt == 0:  # both savers hold the same free name before either writes
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
        return found

    monkeypatch.setitem(lookup, "output_path", same_name_first)
    shown: list[str] = []
    errors: list[BaseException] = []

    def saver(index):
        try:
            for i in range(rounds):
                shown.append(saved(node, make_bank(float(index * 1000 + i)), "race/bank"))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=saver, args=(n,)) for n in range(savers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert asked.count(0) == rounds * savers  # every save went through the patched name (the race was run)
    assert len(asked) > asked.count(0)  # a save was refused the name it was handed and took the next (collided)
    assert len(shown) == len(set(shown)) == rounds * savers
    assert files(output) == sorted(name.replace(os.sep, "/") for name in shown)  # no temporary file left
    values = set()
    for name in shown:
        with safe_open(str(output / name), "pt") as f:
            values.add(float(f.get_tensor(key)[0, 0, 0, 0]))
    assert values == {float(n * 1000 + i) for n in range(savers) for i in range(rounds)}
