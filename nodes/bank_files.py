import os

import folder_paths
from comfy_api.latest import io

from ..pnp_injection import PnPError
from ..pnp_injection.unet.bank_file import SUFFIX
from ..pnp_injection.unet.bank_file import load as load_bank
from ..pnp_injection.unet.bank_file import save as save_bank
from .types import CATEGORY, FeatureBank


OUTPUT_TAG = " [output]"  # ComfyUI's way of naming a file of the output folder in a list


def _listed(root: str, tag: str = "", suffix: str = SUFFIX) -> list[str]:
    """Bank files below `root`, by their own suffix alone: no file is opened."""
    found = []
    for folder, _, files in os.walk(root, followlinks=True):
        found += [os.path.relpath(os.path.join(folder, f), root) + tag for f in files if f.endswith(suffix)]
    return sorted(found)


def bank_files(suffix: str = SUFFIX) -> list[str]:
    """Banks in ComfyUI's input folder, then those saved in its output folder (tagged)."""
    return (_listed(folder_paths.get_input_directory(), "", suffix)
            + _listed(folder_paths.get_output_directory(), OUTPUT_TAG, suffix))


def input_path(name: str) -> str:
    """The file `name` inside the input folder (or the output folder, when tagged so); names
    that leave their folder are refused."""
    if name.endswith(OUTPUT_TAG):
        name, root, where = name[: -len(OUTPUT_TAG)], folder_paths.get_output_directory(), "output"
    else:
        root, where = folder_paths.get_input_directory(), "input"
    root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/") or os.path.commonpath([root, path]) != root:
        raise PnPError(f"Bank file {name!r} is outside ComfyUI's {where} folder: give a name inside it, "
                       f"without '..' or an absolute path.")
    if not os.path.isfile(path):
        raise PnPError(f"No bank file {name!r} in ComfyUI's {where} folder: save one with PnP Save Feature "
                       f"Bank, or copy a bank file there.")
    return path


def output_path(filename_prefix: str, suffix: str = SUFFIX) -> tuple[str, str]:
    """The next free bank file for a prefix in the output folder: (path, name shown to the user)."""
    output_dir = folder_paths.get_output_directory()
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
    except Exception:
        raise PnPError(f"Cannot save under {filename_prefix!r}: the prefix must stay inside ComfyUI's "
                       f"output folder.") from None
    os.makedirs(folder, exist_ok=True)
    file = f"{name}_{counter:05}_{suffix}"  # e.g. pnp_bank_00001_.pnpbank.safetensors
    return os.path.join(folder, file), os.path.join(subfolder, file)


class PnPSaveFeatureBank(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPSaveFeatureBank",
            display_name="PnP Save Feature Bank",
            category=CATEGORY,
            description="Saves a feature bank to ComfyUI's output folder (safetensors), to reuse a source "
                        "without inverting and capturing it again.",
            inputs=[
                FeatureBank.Input("feature_bank", tooltip="From PnP Capture Features."),
                io.String.Input("filename_prefix", default="pnp_bank",
                                tooltip="File name prefix inside the output folder (subfolders allowed, '..' is not)."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, feature_bank, filename_prefix) -> io.NodeOutput:
        path, shown = output_path(filename_prefix)
        save_bank(feature_bank, path)
        return io.NodeOutput(ui={"text": [shown]})


class PnPLoadFeatureBank(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPLoadFeatureBank",
            display_name="PnP Load Feature Bank",
            category=CATEGORY,
            description="Loads a feature bank saved by PnP Save Feature Bank, from ComfyUI's input or output folder.",
            inputs=[io.Combo.Input("bank_file", options=bank_files(),
                                   tooltip=f"A bank file ({SUFFIX}) in ComfyUI's input folder, or one saved in the output "
                                           "folder (marked [output]). Refresh the page to list a bank saved since.")],
            outputs=[FeatureBank.Output("feature_bank", display_name="feature_bank", tooltip="Use like the output of PnP Capture Features.")],
        )

    @classmethod
    def fingerprint_inputs(cls, bank_file):
        try:  # a rewritten file is a new bank
            stat = os.stat(input_path(bank_file))
            return f"{bank_file}:{stat.st_size}:{stat.st_mtime_ns}"
        except PnPError:
            return bank_file

    @classmethod
    def validate_inputs(cls, bank_file):
        try:
            input_path(bank_file)
        except PnPError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, bank_file) -> io.NodeOutput:
        return io.NodeOutput(load_bank(input_path(bank_file)))
