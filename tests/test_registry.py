"""pyproject.toml as the Comfy Registry reads it, and the files a published package holds.

The rules are those of the registry's pyproject specification (docs.comfy.org/registry/
specifications) and of comfy-cli's publishing commands as of comfy-cli 1.23:
`comfy node validate` (parses the file, needs a version, warns on a malformed
`requires-comfyui`) and `comfy node pack` (from a git checkout it archives the files
`git ls-files` lists, minus `.comfyignore` patterns, plus `[tool.comfy] includes`).
comfy-cli itself is not run here: it installs two dozen packages (uv, ruff, cookiecutter,
analytics clients) and its validate command only warns about most of what is checked below.
"""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT.get("project", {})
COMFY = PYPROJECT.get("tool", {}).get("comfy", {})

# A node id: letters, digits and single '-', '_' or '.' between them; starts with a letter.
NODE_ID = re.compile(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*")
SEMVER = re.compile(r"\d+\.\d+\.\d+")
# One part of a version range, e.g. ">=0.3.64" or "<1.0.0" or "0.3.75".
RANGE_PART = re.compile(r"(?:(?:==|>=|<=|!=|~=|<>|>|<|=)\s*)?\d+\.\d+\.\d+(?:-[A-Za-z0-9]+)?")


def packed_files() -> set[str]:
    """What `comfy node pack` puts in the archive from this checkout."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: `comfy node pack` would archive the whole tree")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files"], check=True, capture_output=True, text=True)
    assert not (ROOT / ".comfyignore").exists(), (
        ".comfyignore now exists: apply its patterns here before trusting this list")
    files = set(listed.stdout.splitlines())
    for include in COMFY.get("includes", []):
        files |= {str(p.relative_to(ROOT)) for p in (ROOT / include).rglob("*") if p.is_file()}
    return files


def test_project_name_is_a_valid_node_id():
    name = PROJECT.get("name", "")
    assert name, "[project] name is required: it is the node id users install by"
    assert len(name) < 100, f"[project] name {name!r} must be shorter than 100 characters"
    assert NODE_ID.fullmatch(name), (
        f"[project] name {name!r}: use letters, digits and single '-', '_' or '.', starting with a letter")


def test_readme_installs_by_that_node_id():
    name = PROJECT["name"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"comfy node install {name}" in readme, (
        f"README's install section must give `comfy node install {name}` (the [project] name)")


def test_version_is_semver():
    version = PROJECT.get("version", "")
    assert version, "[project] version is required (comfy node validate refuses an empty one)"
    assert SEMVER.fullmatch(version), f"[project] version {version!r} must be X.Y.Z"


def test_description_and_repository():
    assert PROJECT.get("description", "").strip(), "[project] description is required"
    repo = PROJECT.get("urls", {}).get("Repository", "")
    assert urlparse(repo).scheme == "https" and urlparse(repo).netloc, (
        f"[project.urls] Repository must be an https URL, not {repo!r}")


def test_license_is_a_file_or_a_text_table():
    license_ = PROJECT.get("license")
    assert isinstance(license_, dict) and ({"file", "text"} & license_.keys()), (
        'license must be a table: license = { file = "LICENSE" } or license = { text = "..." }')
    if "file" in license_:
        assert license_["file"] in packed_files(), f"the license file {license_['file']} is not in the package"


def test_tool_comfy_fields():
    publisher = COMFY.get("PublisherId", "")
    assert publisher and not re.search(r"\s", publisher), (
        f"[tool.comfy] PublisherId must be your registry publisher id, not {publisher!r}")
    assert COMFY.get("DisplayName", "").strip(), "[tool.comfy] DisplayName is required"
    if "Icon" in COMFY:  # optional; when present a URL the registry can fetch
        icon = urlparse(COMFY["Icon"])
        assert icon.scheme == "https" and icon.netloc, (
            f"[tool.comfy] Icon must be an https URL or left out, not {COMFY['Icon']!r}")


def test_icon_is_a_packaged_square_image():
    """An Icon URL into this repository names a tracked square PNG of at most 400 px."""
    from PIL import Image

    icon, repo = COMFY.get("Icon", ""), PROJECT["urls"]["Repository"]
    owner_repo = urlparse(repo).path.strip("/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/"
    if not icon.startswith(prefix):
        pytest.skip("the Icon is hosted outside this repository")
    path = icon[len(prefix):].split("/", 1)[1]  # drop the branch
    assert path in packed_files(), f"the Icon URL names {path}, which git does not track"
    with Image.open(ROOT / path) as img:
        assert img.format == "PNG" and img.width == img.height <= 400, (
            f"{path} is {img.format} {img.width}x{img.height}: the icon should be a square PNG of at most 400 px")


def test_requires_comfyui_is_a_range_comfy_cli_accepts():
    spec = COMFY.get("requires-comfyui", "")
    assert spec, "[tool.comfy] requires-comfyui is required: the oldest ComfyUI the tests passed on"
    bad = [part for part in spec.split(",") if not RANGE_PART.fullmatch(part.strip())]
    assert not bad, f"requires-comfyui {spec!r}: {bad} is not [operator]X.Y.Z (comfy-cli would drop the range)"


def test_requires_comfyui_matches_the_readme():
    lowest = re.fullmatch(r">=\s*(\S+)", COMFY["requires-comfyui"].split(",")[0].strip())
    assert lowest, "requires-comfyui should start with '>=X.Y.Z', the oldest host tested"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(rf"tested on {re.escape(lowest.group(1))}(?!\.?\d)", readme), (
        f"README's supported hosts must say 'tested on {lowest.group(1)}' (requires-comfyui's lower bound)")


def test_host_reads_the_same_metadata():
    """ComfyUI's own parser (comfy_config, used when it loads a pack) sees every field as written."""
    config_parser = pytest.importorskip("comfy_config.config_parser", reason="host older than comfy_config")
    config = config_parser.extract_node_configuration(str(ROOT))
    assert config.project.name == PROJECT["name"]
    assert config.project.version == PROJECT["version"]
    assert config.project.description == PROJECT["description"]
    assert config.project.license.file == PROJECT["license"].get("file", "")
    assert config.project.urls.repository == PROJECT["urls"]["Repository"]
    assert config.project.supported_comfyui_version == COMFY["requires-comfyui"]
    assert config.tool_comfy.publisher_id == COMFY["PublisherId"]
    assert config.tool_comfy.display_name == COMFY["DisplayName"]
    assert config.tool_comfy.icon == COMFY.get("Icon", "")


def test_package_holds_what_comfyui_loads():
    files = packed_files()
    needed = {"__init__.py", "pyproject.toml", "README.md", "LICENSE", "nodes/__init__.py", "pnp_injection/__init__.py"}
    assert needed <= files, f"missing from the package (git add them): {sorted(needed - files)}"
    # Every module of the pack on disk must ship: an untracked one imports here and fails for users.
    on_disk = {str(p.relative_to(ROOT)) for d in ("nodes", "pnp_injection") for p in (ROOT / d).rglob("*.py")}
    assert on_disk <= files, f"modules on disk but not in the package (git add them): {sorted(on_disk - files)}"
    # Never anything a local run leaves behind.
    stray = sorted(f for f in files if f.split("/")[0] in {".venv", ".comfyui", "output"} or f.endswith(".pyc"))
    assert not stray, f"build or run leftovers are tracked: {stray}"


def test_entry_point_is_what_comfyui_looks_for():
    """ComfyUI imports the package's __init__.py and registers `comfy_entrypoint` (V3) or NODE_CLASS_MAPPINGS."""
    tree = ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert {"comfy_entrypoint", "NODE_CLASS_MAPPINGS"} & names, (
        "__init__.py defines neither comfy_entrypoint nor NODE_CLASS_MAPPINGS: ComfyUI would load no nodes")


def test_web_directory_ships():
    """The folder __init__.py names as WEB_DIRECTORY (the node help pages the frontend fetches, see
    tests/test_node_docs.py) is in the package, every file of it: an untracked page is a missing page
    for users, and the host skips a WEB_DIRECTORY that does not exist."""
    tree = ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8"))
    values = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name) and t.id == "WEB_DIRECTORY"]
    if not values:
        pytest.skip("__init__.py sets no WEB_DIRECTORY")
    web = (ROOT / values[-1]).resolve()
    on_disk = {str(p.relative_to(ROOT)) for p in web.rglob("*") if p.is_file()}
    assert on_disk, f"WEB_DIRECTORY {values[-1]!r} holds no file"
    missing = sorted(on_disk - packed_files())
    assert not missing, f"files of WEB_DIRECTORY not in the package (git add them): {missing}"
