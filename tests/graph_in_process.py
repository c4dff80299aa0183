"""Run an API-format prompt in the test process, node by node through each node's own class (ComfyUI's core nodes,
the comfy_extras modules named in ``EXTRA_MODULES``, this pack's nodes), for a workflow whose model family the test
server cannot load (tests/velocity_files.py: Qwen-Image).

``run_in_process(prompt, given)`` evaluates every node that an output node (``OUTPUT_TYPES``: Save Image, Save Latent,
Save Video) needs, in dependency order, and returns each output node's inputs (the images, latents or video it would
save) by node id instead of writing files. The nodes whose class_type is in ``given`` (the loaders) are not run: their
outputs are given. Every other node runs as the server would run it (V1 nodes through their FUNCTION, V3 nodes
through ``execute``) under torch.inference_mode as the server's executor, without its validation, caching and progress
messages.
"""
from __future__ import annotations

import importlib

import torch

OUTPUT_TYPES = ("SaveImage", "SaveLatent", "SaveVideo", "PreviewImage")
EXTRA_MODULES = ("comfy_extras.nodes_model_advanced",)  # ModelSamplingAuraFlow and the other schedule patches


def node_classes() -> dict:
    """class_type -> node class: ComfyUI's core nodes, those of ``EXTRA_MODULES``, and this pack's."""
    import nodes as core
    from comfyui_pnp.nodes import NODES
    classes = dict(core.NODE_CLASS_MAPPINGS)
    for name in EXTRA_MODULES:
        classes.update(importlib.import_module(name).NODE_CLASS_MAPPINGS)
    classes.update({cls.define_schema().node_id: cls for cls in NODES})
    return classes


def call(cls, inputs: dict) -> tuple:
    """One node's outputs, V3 (``execute``) or V1 (``FUNCTION``), from its inputs by name."""
    if hasattr(cls, "define_schema"):
        out = cls.execute(**inputs)
        return tuple(out.result if hasattr(out, "result") else out)
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


def run_in_process(prompt: dict, given: dict) -> dict:
    """Each output node's inputs ({node_id: {input: value}}), the graph evaluated in this process; `given` holds the
    outputs (a tuple) of every node of a class_type in it."""
    classes = node_classes()
    results: dict[str, tuple] = {}

    def outputs(node_id: str) -> tuple:
        if node_id not in results:
            node = prompt[node_id]
            kind = node["class_type"]
            if kind not in given and kind not in classes:
                raise KeyError(f"node {node_id}: no class for {kind!r} in process (add its module to EXTRA_MODULES)")
            results[node_id] = given[kind] if kind in given else call(classes[kind], resolve(node["inputs"]))
        return results[node_id]

    def resolve(inputs: dict) -> dict:
        return {name: outputs(value[0])[value[1]] if is_link(value) else value for name, value in inputs.items()}
    with torch.inference_mode():  # as the server's executor runs nodes
        return {node_id: resolve(node["inputs"]) for node_id, node in prompt.items()
                if node["class_type"] in OUTPUT_TYPES}


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)
