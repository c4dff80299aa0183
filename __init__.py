"""ComfyUI entry point of the Plug-and-Play diffusion features pack.

Nodes load lazily so that importing the package (tests, tools) needs no ComfyUI runtime.
"""

async def comfy_entrypoint():
    from .nodes import PnPExtension

    return PnPExtension()
