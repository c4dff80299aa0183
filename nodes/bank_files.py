import errno
import os
import time
from collections import deque

import folder_paths
from comfy_api.latest import io

from ..pnp_injection import PnPError
from ..pnp_injection.bank_file import Format
from ..pnp_injection.unet import bank_file as unet_bank_file
from .types import CATEGORY, FeatureBank

SUFFIX = unet_bank_file.SUFFIX


OUTPUT_TAG = " [output]"  # ComfyUI's way of naming a file of the output folder in a list


_DEPTH = 3            # subfolder levels searched below the input and output folders
_MAX_FOLDERS = 1_000  # folders read per listing, shallowest first: a huge output tree costs no more
_SETTLED_NS = 2_000_000_000  # a folder changed this recently may change again unseen (coarse clocks):
_UNSETTLED_REUSE_NS = 1_000_000_000  # its listing is reused for a second only
# (root, ext) -> (folder modification times, names, monotonic expiry or None)
_LISTINGS: dict[tuple[str, str], tuple[list[tuple[str, int]], list[str], int | None]] = {}


def _listed(root: str, tag: str = "", suffix: str = SUFFIX) -> list[str]:
    """Bank files below `root`, by their own suffix alone, regular files only: no file is opened.

    Linked folders are never entered (a loop is not followed, a bank is listed once); a linked
    file is listed where it resolves inside `root`, as `input_path` requires. The search stops
    at _DEPTH subfolder levels and _MAX_FOLDERS folders, and one search serves every bank kind
    (by the suffix's extension) while none of the folders read has changed (their modification
    times): a schema build costs one stat per folder, not one look per unrelated file."""
    return [name + tag for name in _search(root, os.path.splitext(suffix)[1]) if name.endswith(suffix)]


def _search(root: str, ext: str) -> list[str]:
    """Files ending in `ext` below `root` (paths relative to it, sorted), reused while unchanged."""
    key = (root, ext)
    cached = _LISTINGS.get(key)
    if (cached is not None and (cached[2] is None or time.monotonic_ns() < cached[2])
            and all(_mtime(folder) == stamp for folder, stamp in cached[0])):
        return cached[1]
    real_root = os.path.realpath(root)
    found: list[str] = []
    stamps: list[tuple[str, int]] = []
    pending = deque([(root, 0)])
    while pending and len(stamps) < _MAX_FOLDERS:
        folder, depth = pending.popleft()
        stamps.append((folder, _mtime(folder)))  # before reading: a change while reading shows next time
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if depth < _DEPTH:
                            pending.append((entry.path, depth + 1))
                    elif (entry.name.endswith(ext) and entry.is_file()  # a regular file (a FIFO would block a read)
                          and (not entry.is_symlink() or _inside(real_root, entry.path))):
                        found.append(os.path.relpath(entry.path, root))
        except OSError:  # unreadable or vanished: nothing listed from it
            continue
    found.sort()
    settled = all(-1 < stamp < time.time_ns() - _SETTLED_NS for _, stamp in stamps)
    _LISTINGS[key] = (stamps, found, None if settled else time.monotonic_ns() + _UNSETTLED_REUSE_NS)
    return found


def _mtime(folder: str) -> int:
    try:
        return os.stat(folder).st_mtime_ns
    except OSError:
        return -1


def _inside(real_root: str, path: str) -> bool:
    """Whether `path`, links resolved, lies in the folder whose real path is `real_root`."""
    try:
        return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root
    except ValueError:  # another drive
        return False


def bank_files(suffix: str = SUFFIX) -> list[str]:
    """Banks in ComfyUI's input folder, then those saved in its output folder (tagged)."""
    return (_listed(folder_paths.get_input_directory(), "", suffix)
            + _listed(folder_paths.get_output_directory(), OUTPUT_TAG, suffix))


def input_path(name: str, fmt: Format = unet_bank_file.FORMAT) -> str:
    """The file `name` inside the input folder (or the output folder, when tagged so); names
    that leave their folder are refused, and a missing file names `fmt`'s saver."""
    if name.endswith(OUTPUT_TAG):
        name, root, where = name[: -len(OUTPUT_TAG)], folder_paths.get_output_directory(), "output"
    else:
        root, where = folder_paths.get_input_directory(), "input"
    if "\0" in name:
        raise PnPError(f"Bank file name {name!r} contains a NUL character: choose a file from the list.")
    root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/") or os.path.commonpath([root, path]) != root:
        raise PnPError(f"Bank file {name!r} is outside ComfyUI's {where} folder: give a name inside it, "
                       f"without '..' or an absolute path.")
    if not os.path.isfile(path):
        raise PnPError(f"No bank file {name!r} in ComfyUI's {where} folder: save one with {fmt.saver}, or copy a "
                       f"{fmt.what} file ({fmt.suffix}) there.")
    return path


def _name_max(folder: str) -> int:
    """The longest file name, in bytes, that `folder`'s file system holds."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows) or no answer
        return 255


_SAVE_TRIES = 100  # names other saves may take first (another ComfyUI on this output folder)


def output_path(filename_prefix: str, suffix: str = SUFFIX, default: str = "pnp_bank",
                attempt: int = 0) -> tuple[str, str]:
    """The next free bank file for a prefix in the output folder: (path, name shown to the user).

    An empty or dot-only name takes `default` (never a hidden `._00001_` file). A NUL, a name
    too long for the file system, or a folder that leaves the output folder once links are
    resolved (where the loaders would refuse the file) is a PnPError naming the fix. The name
    is free when returned; the save node asks again, with `attempt` + 1, when another save took
    it first (`bank_file.write` never replaces a file)."""
    if attempt >= _SAVE_TRIES:
        raise PnPError(f"Other saves took {attempt} names for {filename_prefix!r} while this one was writing: "
                       f"save again, or give this save a prefix of its own.")
    if "\0" in filename_prefix:
        raise PnPError(f"The filename_prefix {filename_prefix!r} contains a NUL character, which no file name "
                       f"may hold: remove it.")
    head, tail = os.path.split(filename_prefix)
    if not tail.strip(" ."):  # '', '.', 'banks/': no name of its own
        filename_prefix = os.path.join(head, default)
    output_dir = folder_paths.get_output_directory()
    root = os.path.realpath(output_dir)
    outside = PnPError(f"Cannot save under {filename_prefix!r}: the prefix must stay inside ComfyUI's output "
                       f"folder, links resolved (the bank loaders read only from there). Give a prefix without "
                       f"'..', an absolute path or a linked folder that leads out of it.")
    if not _inside(root, os.path.join(output_dir, os.path.dirname(os.path.normpath(filename_prefix)))):
        raise outside  # before any folder is made
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        if not _inside(root, folder):
            raise outside
        os.makedirs(folder, exist_ok=True)
        limit = _name_max(folder)
    except PnPError:
        raise
    except OSError as e:
        fix = ("Shorten its folder names (at most 255 bytes each)." if e.errno == errno.ENAMETOOLONG
               else "Give a prefix whose folders can be made inside the output folder.")
        raise PnPError(f"Cannot save under {filename_prefix!r}: {e.strerror or e}. {fix}") from None
    except Exception:  # the host's own refusal of a folder outside
        raise outside from None
    while True:
        file = f"{name}_{counter:05}_{suffix}"  # e.g. pnp_bank_00001_.pnpbank.safetensors
        size = len(os.fsencode(file))
        if size > limit:
            keep = limit - (size - len(os.fsencode(name)))
            raise PnPError(f"Cannot save under {filename_prefix!r}: the file name would be {size} bytes long and "
                           f"this folder holds names of at most {limit}. Shorten the prefix's last part to at most "
                           f"{max(keep, 1)} characters.")
        if not os.path.lexists(os.path.join(folder, file)):  # taken names the host's count missed
            return os.path.join(folder, file), os.path.join(subfolder, file)
        counter += 1


class SaveBank(io.ComfyNode):
    """The Save Feature Bank node of a wing: its subclass names the node, its bank's socket type,
    its format and its save function, and takes the next free name when another save took one first.
    (Lower-case attributes: ComfyNode's upper-case names are its own.)"""

    node_id = display_name = category = description = bank_tip = default_prefix = ""
    bank_type: io.Custom
    bank_format: Format

    @staticmethod
    def save(bank, path):
        raise NotImplementedError

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.node_id, display_name=cls.display_name, category=cls.category, description=cls.description,
            inputs=[
                cls.bank_type.Input("feature_bank", tooltip=cls.bank_tip),
                io.String.Input("filename_prefix", default=cls.default_prefix,
                                tooltip="File name prefix inside the output folder (subfolders allowed, '..' is not)."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, feature_bank, filename_prefix) -> io.NodeOutput:
        attempt = 0
        while True:  # another ComfyUI saving to this folder may take the name first: output_path gives the next
            path, shown = output_path(filename_prefix, cls.bank_format.suffix, cls.default_prefix, attempt)
            try:
                cls.save(feature_bank, path)
                return io.NodeOutput(ui={"text": [shown]})
            except FileExistsError:
                attempt += 1


class LoadBank(io.ComfyNode):
    """The Load Feature Bank node of a wing: its subclass names the node, its bank's socket type,
    its format and its load function; files are listed by the format's suffix."""

    node_id = display_name = category = description = file_tip = output_tip = ""
    bank_type: io.Custom
    bank_format: Format

    @staticmethod
    def load(path):
        raise NotImplementedError

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.node_id, display_name=cls.display_name, category=cls.category, description=cls.description,
            inputs=[io.Combo.Input("bank_file", options=bank_files(cls.bank_format.suffix), tooltip=cls.file_tip)],
            outputs=[cls.bank_type.Output("feature_bank", display_name="feature_bank", tooltip=cls.output_tip)],
        )

    @classmethod
    def fingerprint_inputs(cls, bank_file):
        try:  # a rewritten file is a new bank
            stat = os.stat(input_path(bank_file, cls.bank_format))
            return f"{bank_file}:{stat.st_size}:{stat.st_mtime_ns}"
        except PnPError:
            return bank_file

    @classmethod
    def validate_inputs(cls, bank_file):
        try:
            input_path(bank_file, cls.bank_format)
        except PnPError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, bank_file) -> io.NodeOutput:
        return io.NodeOutput(cls.load(input_path(bank_file, cls.bank_format)))


class PnPSaveFeatureBank(SaveBank):
    node_id, display_name, category = "PnPSaveFeatureBank", "PnP Save Feature Bank", CATEGORY
    description = ("Saves a feature bank to ComfyUI's output folder (safetensors), to reuse a source without inverting "
                   "and capturing it again.")
    bank_tip, default_prefix = "From PnP Capture Features.", "pnp_bank"
    bank_type, bank_format, save = FeatureBank, unet_bank_file.FORMAT, staticmethod(unet_bank_file.save)


class PnPLoadFeatureBank(LoadBank):
    node_id, display_name, category = "PnPLoadFeatureBank", "PnP Load Feature Bank", CATEGORY
    description = "Loads a feature bank saved by PnP Save Feature Bank, from ComfyUI's input or output folder."
    file_tip = (f"A bank file ({SUFFIX}) in ComfyUI's input folder, or one saved in the output folder (marked "
                f"[output]). Refresh the page to list a bank saved since.")
    output_tip = "Use like the output of PnP Capture Features."
    bank_type, bank_format, load = FeatureBank, unet_bank_file.FORMAT, staticmethod(unet_bank_file.load)
