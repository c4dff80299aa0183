"""What the pack tells a user about a run: a line in ComfyUI's log, and the same text on the canvas, on the node
that is running (ComfyUI's progress text, which core nodes such as Get Image Size show their figures with)."""
from __future__ import annotations

import logging
import sys

try:
    from comfy_execution.utils import get_executing_context
except ImportError:  # a host without it: the log line is all
    get_executing_context = None


def show(text: str, level: int = logging.INFO) -> None:
    """Log `text` and show it on the executing node (nothing to show outside a ComfyUI server's run)."""
    logging.log(level, text)
    node, server = _executing_node(), _server()
    if node is not None and server is not None:
        server.send_progress_text(text, node)


def _executing_node() -> str | None:
    context = None if get_executing_context is None else get_executing_context()
    return None if context is None else context.node_id


def _server():
    """ComfyUI's PromptServer while one runs (its module is never imported here: the engine runs without it)."""
    return getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
