"""What a user reads about each node: its category, its name, its input names, its help page.

Where ComfyUI's frontend looks for a custom node's help page, read from the code (host ComfyUI
0.3.75, comfyui-frontend-package 1.32.9):

- The frontend, comfyui_frontend_package/static/assets/index-*.js, `NodeHelpService.fetchCustomNodeHelp`:
  for a node whose `python_module` is `custom_nodes.<pack>` (`extractCustomNodeName`: the second
  dotted part, cut at any "@") it fetches `/extensions/<pack>/docs/<node id>/<locale>.md` and, when
  that fails, `/extensions/<pack>/docs/<node id>.md`. Core nodes get `/docs/<node id>/` instead.
- The host, nodes.py `load_custom_node`: a pack's `WEB_DIRECTORY` (its __init__.py, relative to the
  pack) goes into `EXTENSION_WEB_DIRS` under the pack's folder name, the name `python_module`
  carries (`custom_nodes.<folder>`); server.py serves each entry as `web.static('/extensions/' + name,
  dir)`. The `/extensions` route lists every .js file under it as a frontend extension to load.

So each node's page is `<WEB_DIRECTORY>/docs/<node id>.md` (the locale-free fallback, shown for every
locale). `test_the_frontend_fetches_that_layout` re-reads the installed frontend so that a frontend
that moves the pages fails here; `test_the_server_serves_every_page` asks the real server.
"""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import requests
from comfy_extras.nodes_custom_sampler import BasicGuider, KSamplerSelect

from comfy_server import PACK_PYTHON_MODULE
from comfyui_pnp.nodes import NODE_IDS, NODES
from comfyui_pnp.nodes.flux import FAMILIES as FLOW_FAMILIES
from comfyui_pnp.nodes.types import CATEGORY, EDIT_CATEGORY, FLUX_CATEGORY, GUIDER_CATEGORY, SAMPLER_CATEGORY

ROOT = Path(__file__).resolve().parents[1]
FLUX_NODES = {"PnPFluxInversion", "PnPFluxSampler", "PnPFluxFireFlowInversion", "PnPFluxFireFlowSampler",
              "PnPFluxApplyInjection", "PnPFluxNoise", "PnPRFSolverSampler", "PnPFireFlowSampler", "PnPFluxSaveBank",
              "PnPFluxLoadBank", "PnPFluxKVEditInversion", "PnPFluxKVEditSampler", "PnPFluxFeaturePreview"}
SAMPLERS = {"PnPRFSolverSampler", "PnPFireFlowSampler"}  # SAMPLER nodes, with ComfyUI's own
EDIT_SAMPLERS = {"PnPFlowEditSampler", "PnPUniEditSampler", "PnPRFInversionSampler"}  # the velocity edits' SAMPLERs
EDIT_NODES = {"PnPFlowEdit", "PnPUniEdit", "PnPRFInversion", "PnPUniInversion", "PnPRFInversionInvert", "PnPEditSigmas"}
GUIDERS = {"PnPEditGuider"}  # with ComfyUI's own GUIDER nodes
# A flow-wing node and its U-Net counterpart: the names run parallel, the families it serves after "PnP"
# ("Flux/Chroma/HunyuanVideo"; KV-Edit's nodes, Flux.1 only, say "Flux").
COUNTERPARTS = {"PnPFluxInversion": "PnPInversion", "PnPFluxSampler": "PnPSampler",
                "PnPFluxApplyInjection": "PnPApplyInjection", "PnPFluxSaveBank": "PnPSaveFeatureBank",
                "PnPFluxLoadBank": "PnPLoadFeatureBank", "PnPFluxFireFlowInversion": "PnPInversion",
                "PnPFluxFireFlowSampler": "PnPSampler", "PnPFluxKVEditInversion": "PnPInversion",
                "PnPFluxKVEditSampler": "PnPSampler", "PnPFluxFeaturePreview": "PnPFeaturePreview"}
SOLVERS = ("DDIM ", " (RF-Solver)", " (FireFlow)", " (KV-Edit)")  # an inversion's name says its solver
# Every input name of the pack and its one meaning. A new input gets a line here; a name already
# here is used only in this meaning (a second meaning needs a second name).
MEANINGS = {
    "model": "the diffusion model the node runs or patches",
    "latent": "the latent the node starts from (the source image; an empty latent for PnP Generate Source)",
    "conditioning": "the source's prompt (inversion, source pass)",
    "positive": "the prompt of what this node samples",
    "negative": "the negative / unconditional prompt of what this node samples",
    "source_negative": "the prompt the negative-prompt schedule blends in",
    "trajectory": "the source latent at every sampling sigma",
    "feature_bank": "the source's kept features with their schedule (the family's bank type)",
    "bank": "where the bank's tables live: memory, a temp file or recomputed while sampling",
    "steps": "sampling steps of the schedule the source, the bank and the target share",
    "inversion_steps": "model evaluations of the U-Net inversion",
    "keep_steps": "sampling steps whose features the Flux bank keeps",
    "inject": "sampling steps, from the first, with the Flux bank's features injected",
    "feature_steps": "fraction of the steps whose ResBlock features the bank keeps",
    "attention_steps": "fraction of the steps whose self-attention inputs the bank keeps",
    "feature_injection": "fraction of the steps with ResBlock features injected",
    "attention_injection": "fraction of the steps with self-attention queries/keys injected",
    "layers": "the preset of layers whose features are kept",
    "custom_layers": "a layer set as text, overriding `layers`",
    "scheduler": "ComfyUI's scheduler of the schedule",
    "sampler_name": "ComfyUI's sampler",
    "solver": "the Flux inversion's solver, also the sampler the bank is sampled with",
    "strategy": "how FireFlow's kept features act: replaced or added, which of q, k, v",
    "mask": "where to edit (1) and where to keep the source (0): a regional edit",
    "skip_steps": "KV-Edit's steps skipped at the start of the edit",
    "attn_scale": "KV-Edit's bias on the attention to the background's keys",
    "seed": "noise seed",
    "cfg": "classifier-free guidance scale",
    "guidance": "Flux guidance (FluxGuidance's value)",
    "negative_alpha": "weight of the unconditional prompt in the negative-prompt schedule",
    "negative_schedule": "how that weight changes over the steps",
    "bank_precision": "dtype the bank is kept in",
    "bank_device": "where the bank is kept",
    "filename_prefix": "file name prefix in the output folder",
    "bank_file": "a bank file of the input or output folder",
    "step": "one sampling step's index",
    "features": "which kind of kept features to show",
    "block": "an output block's number",
    "transformer_index": "a transformer's index within an output block",
    "site": "one kept tensor of a Flux bank, as stream.block.tensor (single.20.v)",
    "frame": "a video latent's frame index",
    "source_prompt": "the prompt describing the source, the starting side of a velocity edit",
    "inversion_prompt": "the prompt a velocity edit's inversion runs with (officially empty)",
    "source_scale": "the source prompt's guidance (embedded on distilled models, CFG elsewhere)",
    "target_scale": "the target prompt's guidance (embedded on distilled models, CFG elsewhere)",
    "scale": "both prompts' guidance of UniEdit-Flow (embedded on distilled models, CFG elsewhere)",
    "n_max": "FlowEdit's edited steps, counted from the end of the schedule",
    "n_min": "FlowEdit's last steps sampled plainly from the target",
    "n_avg": "FlowEdit's noise draws averaged per step",
    "alpha": "UniEdit-Flow's share of the steps inverted, then edited",
    "omega": "UniEdit-Flow's correction strength along the velocity difference",
    "rule": "which official code's mask rule UniEdit-Flow follows",
    "gamma": "RF-Inversion's pull of the inversion toward the noise",
    "eta": "RF-Inversion's pull of the sampling toward the source",
    "start": "fraction of the steps where RF-Inversion's pull begins",
    "stop": "fraction of the steps where RF-Inversion's pull ends",
    "sigmas": "the schedule a velocity edit's inversion walks",
    "noise": "the noise RF-Inversion's inversion steers toward",
    "inversion": "a velocity edit's kept inversion",
    "method": "which velocity edit a schedule is for",
}
BANK_TYPES = {"PNP_FEATURE_BANK", "PNP_FLUX_BANK"}
SECTIONS = ("## Inputs", "## Outputs", "## What to tune", "## Connects to")


def schemas() -> dict:
    return {schema.node_id: schema for schema in (cls.define_schema() for cls in NODES)}


def category_of(core_node) -> str:
    """A core node's category, in either node API (V3 schema on 0.3.75, V1 CATEGORY on older hosts)."""
    return core_node.define_schema().category if hasattr(core_node, "define_schema") else core_node.CATEGORY


def table_rows(text: str, section: str) -> dict[str, str]:
    """The table rows of one `## section` of a page that start with a backticked name, by that name."""
    body = text.split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0] if f"\n{section}\n" in text else ""
    return {m.group(1): line for line in body.splitlines() if (m := re.match(r"\| `(\w+)`", line))}


def web_directory() -> Path:
    """WEB_DIRECTORY of the pack's __init__.py, read as the host reads it (relative to the pack)."""
    tree = ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8"))
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "WEB_DIRECTORY" for t in stmt.targets):
            return (ROOT / ast.literal_eval(stmt.value)).resolve()
    pytest.fail("__init__.py sets no WEB_DIRECTORY: ComfyUI would serve no help page")


def page_path(node_id: str) -> Path:
    return web_directory() / "docs" / f"{node_id}.md"


def test_web_directory_holds_pages_only():
    """A WEB_DIRECTORY at the checkout's root would serve every file of it, and every .js under it
    (.venv's included) would load into the browser as a frontend extension."""
    web = web_directory()
    assert web != ROOT and ROOT in web.parents, f"WEB_DIRECTORY {web} must be a folder inside the pack"
    assert (web / "docs").is_dir(), f"no {web / 'docs'}"
    scripts = sorted(str(p.relative_to(ROOT)) for p in web.rglob("*.js"))
    assert not scripts, f"{scripts} would load as frontend extensions"


def test_the_frontend_fetches_that_layout():
    """The installed frontend's help service fetches `/extensions/<pack>/docs/<node id>.md` for
    custom nodes; fails when a frontend looks elsewhere."""
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("comfyui_frontend_package is not installed")
    assets = Path(list(spec.submodule_search_locations)[0]) / "static" / "assets"
    code = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(assets.glob("index-*.js")))
    assert "fetchCustomNodeHelp" in code, f"no custom-node help service in {assets}/index-*.js"
    fallback = re.search(r"`/extensions/\$\{\w+\}/docs/\$\{\w+\.name\}\.md`", code)
    localized = re.search(r"`/extensions/\$\{\w+\}/docs/\$\{\w+\.name\}/\$\{\w+\}\.md`", code)
    assert fallback and localized, "the frontend no longer fetches custom-node help from /extensions/<pack>/docs/"
    assert re.search(r'\w+\[0\]==="custom_nodes"\?\w+\(\w+\[1\]\)', code), (
        "the frontend no longer takes the pack's name from python_module's second part")


def test_every_node_has_a_help_page():
    """One page per registered node, named by its node id, titled by its display name, with the
    sections a user looks for. Fails if a page is missing or a node was renamed without its page."""
    found = {p.stem for p in (web_directory() / "docs").glob("*.md")}
    missing = sorted(set(NODE_IDS) - found)
    assert not missing, f"no help page for {missing}: write {[str(page_path(n).relative_to(ROOT)) for n in missing]}"
    stray = sorted(found - set(NODE_IDS))
    assert not stray, f"help pages for nodes that do not exist: {stray}"
    for node_id, schema in schemas().items():
        text = page_path(node_id).read_text(encoding="utf-8")
        assert text.splitlines()[0] == f"# {schema.display_name}", f"{node_id}.md: first line must be '# {schema.display_name}'"
        assert f"`{schema.category}`" in text, f"{node_id}.md does not name its category {schema.category}"
        lacking = [s for s in SECTIONS if s not in text]
        assert not lacking, f"{node_id}.md lacks {lacking}"


def test_pages_list_every_input_with_its_default_and_every_output():
    """Each input has a row `| \\`name\\` ...` holding its default; each output is named. Fails when a
    page falls behind its node (an input added, renamed, or a default changed)."""
    problems = []
    for node_id, schema in schemas().items():
        text = page_path(node_id).read_text(encoding="utf-8")
        rows, output_rows = table_rows(text, "## Inputs"), table_rows(text, "## Outputs")
        for item in schema.inputs:
            row = rows.get(item.id)
            if row is None:
                problems.append(f"{node_id}: input `{item.id}` has no row")
                continue
            default = getattr(item, "default", None)
            if default not in (None, "") and str(default) not in row:
                problems.append(f"{node_id}: the row of `{item.id}` does not give its default {default!r}")
            if item.optional and "(optional)" not in row:
                problems.append(f"{node_id}: the row of `{item.id}` does not say it is optional")
        for out in schema.outputs:
            name = out.display_name or out.id  # what the node shows
            if name not in output_rows:
                problems.append(f"{node_id}: output `{name}` has no row")
        problems += [f"{node_id}: row for input `{n}`, which the node does not have" for n in set(rows) - {i.id for i in schema.inputs}]
        problems += [f"{node_id}: row for output `{n}`, which the node does not have"
                     for n in set(output_rows) - {o.display_name or o.id for o in schema.outputs}]
    assert not problems, "\n".join(problems)


def test_the_server_serves_every_page(comfy_server):
    """The real host serves each page at the URL the frontend builds from the node's python_module."""
    info = comfy_server.object_info()
    served = {node_id: node for node_id, node in info.items() if node.get("python_module") == PACK_PYTHON_MODULE}
    assert set(served) == set(NODE_IDS)
    for node_id, node in sorted(served.items()):
        parts = node["python_module"].split(".")
        assert parts[0] == "custom_nodes"
        url = f"{comfy_server.url}/extensions/{parts[1].split('@')[0]}/docs/{node_id}.md"
        r = requests.get(url, timeout=10)
        assert r.status_code == 200, f"{url}: HTTP {r.status_code}"
        assert r.content == page_path(node_id).read_bytes(), f"{url} is not {page_path(node_id)}"


def test_categories():
    """U-Net nodes in sampling/pnp, Flux nodes in sampling/pnp/flux, the velocity edits in sampling/pnp/edit, and
    the SAMPLERs and the GUIDER where ComfyUI keeps its own (KSamplerSelect's and BasicGuider's categories)."""
    assert (CATEGORY, FLUX_CATEGORY, EDIT_CATEGORY) == ("sampling/pnp", "sampling/pnp/flux", "sampling/pnp/edit")
    assert SAMPLER_CATEGORY == category_of(KSamplerSelect)
    assert GUIDER_CATEGORY == category_of(BasicGuider)
    for node_id, schema in schemas().items():
        expected = (SAMPLER_CATEGORY if node_id in SAMPLERS | EDIT_SAMPLERS else GUIDER_CATEGORY if node_id in GUIDERS
                    else EDIT_CATEGORY if node_id in EDIT_NODES else FLUX_CATEGORY if node_id in FLUX_NODES else CATEGORY)
        assert schema.category == expected, f"{node_id} is in {schema.category}, not {expected}"


def test_node_ids_are_kept_and_names_run_parallel():
    """Node ids are what saved workflows name: they never change. A flow-wing node's display name is its
    U-Net counterpart's with the families it serves after "PnP" (the inversions also name their solver), so
    that a search for any family ("hunyuan", "chroma") finds it."""
    all_schemas = schemas()
    assert list(all_schemas) == NODE_IDS
    assert NODE_IDS == ["PnPInversion", "PnPGenerateSource", "PnPCaptureFeatures", "PnPApplyInjection", "PnPSampler",
                        "PnPSigmas", "PnPGuider", "PnPSaveFeatureBank", "PnPLoadFeatureBank", "PnPFeaturePreview",
                        "PnPFluxInversion", "PnPFluxSampler", "PnPFluxFireFlowInversion", "PnPFluxFireFlowSampler",
                        "PnPFluxApplyInjection", "PnPFluxNoise", "PnPRFSolverSampler", "PnPFireFlowSampler",
                        "PnPFluxSaveBank", "PnPFluxLoadBank", "PnPFluxKVEditInversion", "PnPFluxKVEditSampler",
                        "PnPFlowEdit", "PnPUniEdit", "PnPRFInversion", "PnPEditGuider", "PnPFlowEditSampler",
                        "PnPUniInversion", "PnPUniEditSampler", "PnPRFInversionInvert", "PnPRFInversionSampler",
                        "PnPEditSigmas", "PnPFluxFeaturePreview"]

    def plain(name: str) -> str:
        for solver in SOLVERS:
            name = name.replace(solver, "")
        return name

    for flux, unet in COUNTERPARTS.items():
        unet_name, flux_name = all_schemas[unet].display_name, all_schemas[flux].display_name
        families = "Flux" if "KVEdit" in flux else FLOW_FAMILIES
        assert plain(flux_name) == plain(unet_name).replace("PnP ", f"PnP {families} ", 1), (
            f"{flux} is {flux_name!r}; its U-Net counterpart is {unet_name!r}")
    names = [s.display_name for s in all_schemas.values()]
    assert len(set(names)) == len(names), names
    # Outside the PnP categories, the name says where the node belongs (no search aliases on this host).
    assert all("PnP Flux" in all_schemas[node_id].display_name for node_id in SAMPLERS)
    assert all("(PnP)" in all_schemas[node_id].display_name for node_id in EDIT_SAMPLERS)
    assert all(all_schemas[node_id].display_name.startswith("PnP ") for node_id in EDIT_NODES | GUIDERS)


def test_each_input_name_has_one_meaning():
    """Every input name is in MEANINGS and has one socket type on every node (a bank input takes
    its family's bank). Fails when a name is added without a meaning, or reused for another type."""
    types: dict[str, set] = {}
    for node_id, schema in schemas().items():
        for item in schema.inputs:
            assert item.id in MEANINGS, f"{node_id}: input `{item.id}` is not in MEANINGS: give it its one meaning"
            kind = item.get_io_type()
            types.setdefault(item.id, set()).add("BANK" if kind in BANK_TYPES else kind)
    mixed = {name: kinds for name, kinds in types.items() if len(kinds) > 1}
    assert not mixed, f"input names with several socket types: {mixed}"
    assert set(MEANINGS) == set(types), f"MEANINGS lists inputs no node has: {sorted(set(MEANINGS) - set(types))}"
    by_node = {node_id: {i.id for i in schema.inputs} for node_id, schema in schemas().items()}
    # `inject` counts injected steps: only the nodes that inject have it; the inversion keeps.
    assert {n for n, ids in by_node.items() if "inject" in ids} == {"PnPFluxSampler", "PnPFluxFireFlowSampler",
                                                                     "PnPFluxApplyInjection"}
    assert "keep_steps" in by_node["PnPFluxInversion"] and "keep_steps" in by_node["PnPFluxFireFlowInversion"]
