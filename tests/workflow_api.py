"""UI-format (litegraph) workflows -> API-format prompts, as the ComfyUI frontend converts them on queue.

The node definitions come from the running server's ``/object_info``, so widget values are mapped to
the input names the server has now:

- ``widgets_values`` holds one value per widget, in the order of the node's inputs (required, then
  optional). Some widgets are UI-only and hold a value the server never sees: the
  ``control_after_generate`` combo after INT inputs marked with it (and after any INT named ``seed`` or
  ``noise_seed``), and the upload button that the frontend appends to the required inputs of nodes with
  an ``image_upload`` / ``video_upload`` / ``animated_image_upload`` combo (Load Image).
- A widget turned into an input socket and linked takes its value from the link.
- Frontend-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) are not sent; links through a
  Reroute are followed to the real source, a PrimitiveNode's value is written into its targets.
- Muted nodes (mode 2) are not sent and neither are links from them; bypassed nodes (mode 4) are not
  sent and their outputs pass on the input of the same type, as in the frontend.

``shrink_for_tests`` gives the overrides that make a shipped workflow run in seconds on the generated
test models (file names, steps, image size) and leaves everything else as shipped.
"""
from __future__ import annotations

import copy

MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
UI_ONLY_TYPES = NOTE_TYPES | {"Reroute", "PrimitiveNode"}
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
CONTROL_AFTER_GENERATE = "control_after_generate"
UPLOAD = "upload"
# Nodes whose width and height draw a mask (no cost to shrink): they keep their size, and the workflow's own
# Resize brings the mask to the image's size, as it does a mask drawn on a photo of any size.
MASK_CANVAS_TYPES = frozenset({"SolidMask"})


class ConversionError(ValueError):
    """The workflow cannot be converted: the message names the node and what is wrong."""


def _spec_options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    """An input the frontend shows as a widget (a value), not as a socket."""
    if _spec_options(spec).get("forceInput"):
        return False
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name: str, spec) -> bool:
    options = _spec_options(spec)
    if spec[0] == "INT":
        return bool(options.get(CONTROL_AFTER_GENERATE, name in ("seed", "noise_seed")))
    return (isinstance(spec[0], list) or spec[0] == "COMBO") and bool(options.get(CONTROL_AFTER_GENERATE))


def _is_upload_combo(spec) -> bool:
    return (isinstance(spec[0], list) or spec[0] == "COMBO") and any(_spec_options(spec).get(f) for f in UPLOAD_FLAGS)


def _ordered_inputs(node_def: dict, section: str) -> list[str]:
    inputs = (node_def.get("input") or {}).get(section) or {}
    order = (node_def.get("input_order") or {}).get(section)
    return [name for name in (order if order is not None else inputs) if name in inputs]


def widget_slots(node_def: dict) -> list[str]:
    """The names of a node's widgets in ``widgets_values`` order; UI-only widgets are named
    ``control_after_generate`` and ``upload``."""
    inputs = node_def.get("input") or {}
    slots = []
    for section in ("required", "optional"):
        upload = False
        for name in _ordered_inputs(node_def, section):
            spec = inputs[section][name]
            if not is_widget(spec):
                continue
            slots.append(name)
            if _has_control_widget(name, spec):
                slots.append(CONTROL_AFTER_GENERATE)
            upload = upload or (section == "required" and _is_upload_combo(spec))
        if upload:
            slots.append(UPLOAD)
    return slots


def widget_defaults(node_def: dict) -> dict:
    """Default values of a node's widget inputs (what the frontend shows for a value a workflow lacks)."""
    defaults = {}
    for section in ("required", "optional"):
        for name, spec in ((node_def.get("input") or {}).get(section) or {}).items():
            if not is_widget(spec):
                continue
            options = _spec_options(spec)
            if "default" in options:
                defaults[name] = options["default"]
            elif isinstance(spec[0], list) and spec[0]:
                defaults[name] = spec[0][0]
            elif spec[0] == "COMBO" and options.get("options"):
                defaults[name] = options["options"][0]
    return defaults


def widget_values(node: dict, node_def: dict, *, strict: bool = False) -> dict:
    """A UI node's widget values by input name (UI-only widgets left out).

    As in the frontend, values are matched to widgets by position: a workflow saved before inputs were
    appended to a node has fewer values (the rest get their defaults), and values of widgets that
    frontend extensions add are left over (ignored). ``strict`` makes any count mismatch an error.
    """
    slots = widget_slots(node_def)
    values = node.get("widgets_values")
    if values is None:
        values = []
    if isinstance(values, dict):  # some frontends serialize widgets by name
        named = dict(values)
    else:
        if strict and len(values) != len(slots):
            raise ConversionError(
                f"node {node['id']} ({node['type']}) has {len(values)} widget values for {len(slots)} widgets "
                f"{slots}: the node's inputs changed since the workflow was saved; load it in the UI and save "
                f"it again")
        named = dict(zip(slots, values))
    defaults = widget_defaults(node_def)
    result = {}
    for name in slots:
        if name in (CONTROL_AFTER_GENERATE, UPLOAD):
            continue
        if name in named:
            result[name] = named[name]
        elif name in defaults:
            result[name] = defaults[name]
    return result


def _links_by_id(workflow: dict) -> dict:
    links = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                                 link.get("type"))
        else:
            link_id, origin_id, origin_slot, target_id, target_slot, link_type = link[:6]
            links[link_id] = (origin_id, origin_slot, target_id, target_slot, link_type)
    return links


_NO_VALUE = object()


class _Converter:
    def __init__(self, workflow: dict, object_info: dict, strict: bool):
        self.object_info = object_info
        self.strict = strict
        self.nodes = {node["id"]: node for node in workflow.get("nodes") or []}
        self.links = _links_by_id(workflow)
        subgraphs = {sg.get("id") for sg in ((workflow.get("definitions") or {}).get("subgraphs") or [])}
        for node in self.nodes.values():
            if node["type"] in subgraphs:
                raise ConversionError(f"node {node['id']} is a subgraph ({node['type']}): subgraphs are not supported")

    def source(self, link_id, seen=()):
        """What a link delivers: [node_id, slot], a literal value (PrimitiveNode) or _NO_VALUE."""
        if link_id is None or link_id not in self.links:
            return _NO_VALUE
        if link_id in seen:
            raise ConversionError(f"link {link_id} is part of a cycle of reroutes/bypassed nodes")
        seen = (*seen, link_id)
        origin_id, origin_slot, _, _, link_type = self.links[link_id]
        origin = self.nodes.get(origin_id)
        if origin is None:
            raise ConversionError(f"link {link_id} comes from node {origin_id}, which is not in the workflow")
        mode = origin.get("mode", MODE_ALWAYS)
        if mode == MODE_NEVER:
            return _NO_VALUE
        if origin["type"] == "Reroute":
            inputs = origin.get("inputs") or []
            return self.source(inputs[0].get("link") if inputs else None, seen)
        if origin["type"] == "PrimitiveNode":
            values = origin.get("widgets_values") or []
            return values[0] if values else _NO_VALUE
        if mode == MODE_BYPASS:
            return self.bypass(origin, origin_slot, link_type, seen)
        return [str(origin_id), origin_slot]

    def bypass(self, node, slot, link_type, seen):
        """A bypassed node passes on its input of the output's type, the same slot first."""
        inputs = node.get("inputs") or []
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) else link_type
        order = ([slot] if slot < len(inputs) else []) + [i for i in range(len(inputs)) if i != slot]
        for i in order:
            if inputs[i].get("type") in (out_type, "*") and inputs[i].get("link") is not None:
                return self.source(inputs[i]["link"], seen)
        return _NO_VALUE

    def node_inputs(self, node: dict, node_def: dict) -> dict:
        inputs = widget_values(node, node_def, strict=self.strict)
        known = {name for section in ("required", "optional")
                 for name in ((node_def.get("input") or {}).get(section) or {})}
        for slot in node.get("inputs") or []:
            name = slot.get("name") or (slot.get("widget") or {}).get("name")
            if slot.get("link") is None:
                continue
            if name not in known:
                raise ConversionError(f"node {node['id']} ({node['type']}) has a link into {name!r}, "
                                      f"which {node['type']} does not have")
            value = self.source(slot["link"])
            if value is not _NO_VALUE:  # else a widget keeps its own value, a socket stays unset
                inputs[name] = value
        return inputs

    def convert(self) -> dict:
        prompt = {}
        for node_id, node in self.nodes.items():
            if node["type"] in UI_ONLY_TYPES or node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
                continue
            node_def = self.object_info.get(node["type"])
            if node_def is None:
                raise ConversionError(f"node {node_id}: unknown node type {node['type']!r} (not in /object_info)")
            prompt[str(node_id)] = {
                "inputs": self.node_inputs(node, node_def),
                "class_type": node["type"],
                "_meta": {"title": node.get("title") or node_def.get("display_name") or node["type"]},
            }
        return prompt


def to_api(workflow: dict, object_info: dict, *, strict: bool = False) -> dict:
    """The API-format prompt of a UI-format workflow ({node_id: {"inputs", "class_type", "_meta"}})."""
    return _Converter(workflow, object_info, strict).convert()


def node_types(workflow: dict) -> set[str]:
    return {node["type"] for node in workflow.get("nodes") or []}


def notes(workflow: dict) -> list[str]:
    """The texts of the workflow's Note / MarkdownNote nodes."""
    return [(node.get("widgets_values") or [""])[0] for node in workflow.get("nodes") or []
            if node["type"] in NOTE_TYPES]


FLUX_INVERSIONS = ("PnPFluxInversion", "PnPFluxFireFlowInversion")
KV_EDIT_INVERSION = "PnPFluxKVEditInversion"  # steps and skip_steps; no layer input (its own set: every block)
# PnP Flux/Chroma/HunyuanVideo Inversion's preset for Chroma and Flux.2: the second half of the model's own single blocks, any count.
ANALOGY_LAYERS = "rf-solver-edit (by analogy)"


def is_chroma_loader(node: dict) -> bool:
    """A Load Diffusion Model of a Chroma file (by its name, as Chroma1-HD.safetensors)."""
    return node["class_type"] == "UNETLoader" and "chroma" in str(node["inputs"].get("unet_name", "")).lower()


def is_hunyuan_loader(node: dict) -> bool:
    """A Load Diffusion Model or Load VAE of a HunyuanVideo file (by its name, as hunyuan_video_t2v_720p_bf16 and
    hunyuan_video_vae_bf16)."""
    name = {"UNETLoader": "unet_name", "VAELoader": "vae_name"}.get(node["class_type"])
    return name is not None and "hunyuan" in str(node["inputs"].get(name, "")).lower()


# The velocity edits' one-node and schedule nodes (nodes/velocity.py): their `steps` (-1: the official count for the
# model) become the tests' count; the knobs left at -1 scale with it (FlowEdit's n_max keeps its share of the steps).
VELOCITY_STEP_NODES = frozenset({"PnPFlowEdit", "PnPUniEdit", "PnPRFInversion", "PnPEditSigmas"})


def loads_family(node: dict, word: str) -> bool:
    """A Load Diffusion Model, Load VAE or Load Checkpoint of a file whose name has `word` (case-insensitive), as
    wan2.1_t2v_1.3B_fp16, wan_2.1_vae, sd3.5_medium_incl_clips_t5xxlfp8scaled and qwen_image_fp8_e4m3fn."""
    name = {"UNETLoader": "unet_name", "VAELoader": "vae_name", "CheckpointLoaderSimple": "ckpt_name"}.get(
        node["class_type"])
    return name is not None and word in str(node["inputs"].get(name, "")).lower()


def shrink_for_tests(prompt: dict, *, checkpoint: str, controlnet: str, image: str, flux_unet: str | None = None,
                     flux_text_encoder: str | None = None, flux_vae: str | None = None, flux_layers: dict | None = None,
                     steps: int = 4, inversion_steps: int = 8, other_steps: int = 2, size: int = 64,
                     flux_steps: int | None = None, chroma_unet: str | None = None,
                     chroma_steps: int | None = None, video: str | None = None, hunyuan_unet: str | None = None,
                     hunyuan_vae: str | None = None, hunyuan_steps: int | None = None, wan_unet: str | None = None,
                     sd35_checkpoint: str | None = None, velocity_steps: int = 4,
                     flux_velocity_steps: int | None = None) -> dict:
    """Overrides {node_id: {input: value}} that make an API prompt fast on the test models.

    Model and image names become the test files, PnP DDIM Inversion gets ``steps`` and
    ``inversion_steps`` (equal ones stay equal: the fast mode stays the fast mode), other samplers
    ``other_steps``, and image/latent sizes ``size`` (not a Solid Mask's: ``MASK_CANVAS_TYPES``). Linked inputs
    and everything else stay as shipped.

    Flux graphs (given the ``flux_*`` test files of tests/flux_files.py): Load Diffusion Model and Load VAE
    get the test files, and DualCLIPLoader ``flux`` (CLIP-L + T5-XXL) becomes DualCLIPLoader ``sd3`` with
    the test CLIP-L in both slots, which gives Flux-shaped conditioning without T5-XXL (flux_files.py says why).
    PnP Flux/Chroma/HunyuanVideo Inversion (RF-Solver or FireFlow) gets ``flux_steps`` (default: ``steps``) and ``keep_steps`` in the shipped proportion
    (20 of 25 -> 3 of 4; 2 of 3; 1 of 2: a part of the steps stays a part, at least 1 and not all), and
    ``flux_layers[its node type]`` as its custom layers (the test model has fewer blocks than the presets name), except
    with the layers ``ANALOGY_LAYERS``, which resolve over the model's own single blocks and run as shipped; a node
    linked to its bank scales its own ``inject`` by the same proportion.
    Chroma graphs (a Load Diffusion Model whose file name has "chroma", given ``chroma_unet``): that loader gets
    ``chroma_unet``, Load CLIP type ``chroma`` (T5-XXL) becomes Load CLIP type ``sd3`` with the test CLIP-L (the same
    4096-wide conditioning, 77 tokens), and the Flux steps are ``chroma_steps`` (default: ``flux_steps``).
    HunyuanVideo graphs (``is_hunyuan_loader``, given ``hunyuan_unet``): Load Diffusion Model and Load VAE get
    ``hunyuan_unet`` and ``hunyuan_vae``, DualCLIPLoader ``hunyuan_video`` (CLIP-L + llava-llama-3) becomes
    DualCLIPLoader ``sd3`` with the test CLIP-L (4096-wide conditioning and CLIP-L's pooled output, as the model
    reads them), and the Flux steps are ``hunyuan_steps`` (default: ``flux_steps``). Load Video gets ``video``;
    the frame count is the clip's (Image From Batch's length stays as shipped). The test HunyuanVideo has the real
    block counts, so its layers stay as shipped too.
    PnP Flux Inversion (KV-Edit) gets ``flux_steps`` and ``skip_steps`` in the same proportion, at least 1 where the
    shipped skip is not 0 and at most ``flux_steps`` - 1 (4 of 28 -> 1 of 3: one step skipped, two edited).
    The velocity edits (``VELOCITY_STEP_NODES``: PnP FlowEdit, UniEdit-Flow, RF-Inversion, Edit Sigmas) get
    ``velocity_steps`` (``flux_velocity_steps`` on the test Flux, whose evaluations cost about 1 s each); their other
    knobs stay as shipped (at -1 FlowEdit's n_max keeps its share of the steps). Wan 2.1 graphs (``loads_family``
    "wan", given ``wan_unet``): Load Diffusion Model gets ``wan_unet``, Load VAE the video VAE ``hunyuan_vae`` (a
    TAEHV: the Wan 2.1 VAE's 16 channels, 8x in space and 4x in time), and Load CLIP type ``wan`` (umT5-XXL) becomes
    Load CLIP type ``sd3`` with the test CLIP-L (4096-wide conditioning, as the model reads it). An SD3 checkpoint
    (``loads_family`` "sd3") becomes ``sd35_checkpoint``. Qwen-Image graphs (``loads_family`` "qwen") keep their
    loaders: no test file of that family is served (tests/velocity_files.py says why; its workflow runs in process).
    """
    names = {"CheckpointLoaderSimple": {"ckpt_name": checkpoint}, "ControlNetLoader": {"control_net_name": controlnet},
             "LoadImage": {"image": image}}
    if flux_vae:
        names["VAELoader"] = {"vae_name": flux_vae}
    if video:
        names["LoadVideo"] = {"file": video}
    overrides = {}
    flux_steps = steps if flux_steps is None else flux_steps
    if chroma_unet and chroma_steps and any(is_chroma_loader(node) for node in prompt.values()):
        flux_steps = chroma_steps
    # The test HunyuanVideo has the real block counts: its presets run as shipped.
    hunyuan_graph = bool(hunyuan_unet) and any(is_hunyuan_loader(node) for node in prompt.values())
    if hunyuan_graph and hunyuan_steps:
        flux_steps = hunyuan_steps
    families = {word for node in prompt.values() for word in ("chroma", "hunyuan", "wan", "qwen")
                if node["class_type"] == "UNETLoader" and loads_family(node, word)}
    flux_graph = any(node["class_type"] == "UNETLoader" for node in prompt.values()) and not families
    edit_steps = flux_velocity_steps if flux_graph and flux_velocity_steps else velocity_steps

    def flux_inject(count: int, shipped_steps: int) -> int:  # the same fraction of the steps; 0 stays 0, a part a part
        most = flux_steps if count >= shipped_steps else max(1, flux_steps - 1)
        return min(most, max(1, round(count * flux_steps / shipped_steps))) if count else 0

    for node_id, node in prompt.items():
        inputs, kind = node["inputs"], node["class_type"]
        change = dict(names.get(kind, {}))
        if kind == "UNETLoader" and not loads_family(node, "qwen"):
            unet = chroma_unet if is_chroma_loader(node) and chroma_unet else flux_unet
            unet = hunyuan_unet if is_hunyuan_loader(node) and hunyuan_unet else unet
            unet = wan_unet if loads_family(node, "wan") and wan_unet else unet
            if unet:
                change["unet_name"] = unet
        if kind in ("UNETLoader", "VAELoader") and loads_family(node, "qwen"):
            change = {}
        video_vae = is_hunyuan_loader(node) or (wan_unet and loads_family(node, "wan"))
        if kind == "VAELoader" and video_vae and hunyuan_vae:
            change["vae_name"] = hunyuan_vae
        if kind == "CheckpointLoaderSimple" and loads_family(node, "sd3") and sd35_checkpoint:
            change["ckpt_name"] = sd35_checkpoint
        if kind == "CLIPLoader" and inputs.get("type") == "wan" and wan_unet and flux_text_encoder:
            change.update(clip_name=flux_text_encoder, type="sd3")
        if kind == "DualCLIPLoader" and inputs.get("type") == "hunyuan_video" and flux_text_encoder:
            change.update(clip_name1=flux_text_encoder, clip_name2=flux_text_encoder, type="sd3")
        if kind == "DualCLIPLoader" and inputs.get("type") == "flux" and flux_text_encoder:
            change.update(clip_name1=flux_text_encoder, clip_name2=flux_text_encoder, type="sd3")
        if kind == "CLIPLoader" and inputs.get("type") == "chroma" and flux_text_encoder:
            change.update(clip_name=flux_text_encoder, type="sd3")
        bank = inputs.get("feature_bank")
        if kind in FLUX_INVERSIONS:
            change.update(steps=flux_steps, keep_steps=flux_inject(inputs["keep_steps"], inputs["steps"]))
            if flux_layers and inputs.get("layers") != ANALOGY_LAYERS and not hunyuan_graph:
                change["custom_layers"] = flux_layers[kind]
        elif kind == KV_EDIT_INVERSION:
            skip = min(flux_steps - 1, flux_inject(inputs["skip_steps"], inputs["steps"]))
            change.update(steps=flux_steps, skip_steps=skip)
        elif isinstance(inputs.get("inject"), int) and isinstance(bank, list) and \
                prompt[bank[0]]["class_type"] in FLUX_INVERSIONS:
            change["inject"] = flux_inject(inputs["inject"], prompt[bank[0]]["inputs"]["steps"])
        elif kind in VELOCITY_STEP_NODES:
            change["steps"] = edit_steps
        elif kind == "PnPInversion":
            fast = inputs.get("inversion_steps") == inputs.get("steps")
            change.update(steps=steps, inversion_steps=steps if fast else inversion_steps)
        elif isinstance(inputs.get("steps"), int):
            change["steps"] = min(inputs["steps"], other_steps)
        for key in ("width", "height"):
            if kind not in MASK_CANVAS_TYPES and isinstance(inputs.get(key), int) and inputs[key] > size:
                change[key] = size
        change = {k: v for k, v in change.items() if k in inputs and not isinstance(inputs[k], list)}
        if change:
            overrides[node_id] = change
    return overrides


def apply_overrides(prompt: dict, overrides: dict) -> dict:
    """A copy of the prompt with {node_id: {input: value}} applied."""
    prompt = copy.deepcopy(prompt)
    for node_id, change in overrides.items():
        prompt[node_id]["inputs"].update(change)
    return prompt
