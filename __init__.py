"""ComfyUI entry point of the Plug-and-Play diffusion features pack.

Nodes load lazily so that importing the package (tests, tools) needs no ComfyUI runtime.
"""

# ComfyUI serves this folder at /extensions/<this pack's folder name>/ (nodes.py,
# load_custom_node, and server.py); the frontend's node library fetches each node's help page
# from its docs/ subfolder: web/docs/<node id>.md. It holds no JavaScript, so it adds no
# frontend extension.
WEB_DIRECTORY = "./web"

async def comfy_entrypoint():
    from .nodes import PnPExtension

    return PnPExtension()
