"""The shipped workflows in the real ComfyUI frontend: headless Chromium driven by Playwright.

For each workflows/*.json: load it into the page as a user would (``app.loadGraphData``), check that no
missing-node dialog opens and no node shows an error, check that the frontend's own API conversion is
the one tests/workflow_api.py makes, shrink steps/sizes/file names (and Flux's text-encoder type) in the
widgets (``overrides_for_tests``, as test_workflows.py does), queue it from the page and wait for its
images (Save Image) or video (Save Video, playing) in the page and in /history. The page queues the prompt that the session's server run of the workflow
(``workflow_runs``, tests/workflow_runs.py) has just run, so the server answers it from its cache. A workflow that the
test server cannot run (``IN_PROCESS_WORKFLOWS``: Qwen-Image, whose graph tests/test_workflows.py runs in process) is
loaded, converted and shrunk in the page, not queued.

``PNP_SCREENSHOTS=1`` also writes docs/screenshots/<workflow>.png (the graph as shipped) and redraws the
template browser's card pictures, workflows/<workflow>.jpg (scripts/draw_cards.py: this frontend shows a custom
pack's template by its file name alone, so each card's title, one-line description and purpose are drawn into its
picture; ``test_the_template_browser_shows_each_card`` checks them in the real template browser).
``PNP_RESAVE_WORKFLOWS=1`` writes each
workflow back as the frontend exports it after loading it, which is how a file catches up with
inputs added to a node since it was saved (test_workflows.py's strict widget check names them).

Chromium is the Debian package (/usr/bin/chromium, installed by scripts/setup.sh); Playwright
downloads no browser here.
"""
import base64
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import sync_playwright

from comfy_server import INPUT_IMAGE_NAME, INPUT_VIDEO_NAME
from workflow_api import apply_overrides, to_api
from workflow_runs import (BANK_WORKFLOW, EXPECTED, FLOWEDIT_FLUX_WORKFLOW, FLUX_WORKFLOWS, IN_PROCESS_WORKFLOWS,
                           RUN_1_GROUP, RUN_2_GROUP, SAVE_TYPES, WORKFLOW_DIR, load, overrides_for_tests,
                           run_2_of_the_bank_workflow)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import draw_cards  # noqa: E402  (the card pictures' drawing: scripts/draw_cards.py)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
SCREENSHOTS = os.environ.get("PNP_SCREENSHOTS") == "1"
RESAVE = os.environ.get("PNP_RESAVE_WORKFLOWS") == "1"
SCREENSHOT_DIR = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
SHIPPED_IMAGE = "example.png"
SHIPPED_VIDEO = "example.mp4"
# The server's user settings: no first-run template browser; full detail at any zoom, no minimap or
# canvas info (for the screenshots).
SETTINGS = {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.MinFontSizeForLOD": 0,
            "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}
RUN_TIMEOUT_MS = 120_000

READY_JS = ("() => !!(window.app && app.graph && app.canvas && app.extensionManager && window.LiteGraph"
            " && LiteGraph.registered_node_types['PnPSampler'])")
# Records each queued prompt's answer and how each prompt ended, from the frontend's own api object.
HOOKS_JS = """() => {
  window.__pnp = {queued: [], done: {}};
  const queue = app.api.queuePrompt.bind(app.api);
  app.api.queuePrompt = async (...args) => {
    try { const r = await queue(...args); window.__pnp.queued.push(r); return r; }
    catch (e) { window.__pnp.queued.push({refused: e.response ?? String(e)}); throw e; }
  };
  app.api.addEventListener('execution_success', e => { window.__pnp.done[e.detail.prompt_id] = {status: 'success'}; });
  app.api.addEventListener('execution_error', e => {
    window.__pnp.done[e.detail.prompt_id] = {status: 'error', detail: e.detail}; });
  app.api.addEventListener('execution_interrupted', e => {
    window.__pnp.done[e.detail.prompt_id] = {status: 'interrupted', detail: e.detail}; });
}"""
LOAD_JS = "async ([workflow, name]) => { await app.loadGraphData(workflow, true, true, name); }"
STATE_JS = """(types) => ({
  unregistered: types.filter(t => !LiteGraph.registered_node_types[t]),
  nodes_with_errors: app.graph.nodes.filter(n => n.has_errors).map(n => n.id + ' ' + n.type),
  dialogs: [...document.querySelectorAll('.p-dialog')].filter(d => d.offsetParent !== null).map(d => d.innerText.slice(0, 300)),
  error_toasts: [...document.querySelectorAll('.p-toast-message-error, .p-toast-message-warn')].map(t => t.innerText.slice(0, 300)),
})"""
API_JS = "async () => JSON.stringify((await app.graphToPrompt()).output)"
SET_WIDGETS_JS = """(overrides) => {
  for (const [id, change] of Object.entries(overrides)) {
    const node = app.graph.getNodeById(Number(id));
    for (const [name, value] of Object.entries(change)) {
      const widget = node.widgets.find(w => w.name === name);
      if (!widget) throw new Error(`node ${id} (${node.type}) has no widget ${name}`);
      widget.value = value;
      widget.callback?.(value);
    }
  }
  app.graph.setDirtyCanvas(true, true);
}"""
QUEUE_JS = """async () => {
  const before = window.__pnp.queued.length;
  await app.queuePrompt(0, 1);
  return window.__pnp.queued[before] ?? {refused: 'the frontend did not send the prompt'};
}"""
# The bank workflow's later runs, done in the UI: mute the "Run 1" group, un-mute "Run 2", pick the bank.
BANK_RUN_2_JS = """([run1, run2, bankFile]) => {
  const members = prefix => {
    const group = app.graph.groups.find(g => g.title.startsWith(prefix));
    group.recomputeInsideNodes();
    return [...group.children].filter(c => c instanceof LiteGraph.LGraphNode);
  };
  for (const node of members(run1)) node.mode = 2;  // never (muted)
  for (const node of members(run2)) node.mode = 0;  // always
  const loader = app.graph.nodes.find(n => n.type === 'PnPLoadFeatureBank');
  loader.widgets.find(w => w.name === 'bank_file').value = bankFile;
  app.graph.setDirtyCanvas(true, true);
}"""


@pytest.fixture(scope="module")
def page(comfy_server):
    if SCREENSHOTS:  # so that Load Image and Load Video show a preview of the shipped file names
        shutil.copy(comfy_server.input_dir / INPUT_IMAGE_NAME, comfy_server.input_dir / SHIPPED_IMAGE)
        shutil.copy(comfy_server.input_dir / INPUT_VIDEO_NAME, comfy_server.input_dir / SHIPPED_VIDEO)
    for key, value in SETTINGS.items():
        requests.post(f"{comfy_server.url}/settings/{key}", json=value, timeout=10).raise_for_status()
    with sync_playwright() as playwright:
        # launch() gives a fresh temporary profile; Playwright's own browser download is never used.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 900})
            context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
            page = context.new_page()
            page.pnp_errors = []
            page.on("pageerror", lambda error: page.pnp_errors.append(str(error)))
            page.goto(comfy_server.url)
            page.wait_for_function(READY_JS, timeout=60_000)
            page.evaluate(HOOKS_JS)
            yield page
        finally:
            browser.close()


def load_in_page(page, workflow: dict, name: str) -> dict:
    close_dialogs(page)  # left open by a test that failed before
    page.evaluate(LOAD_JS, [workflow, f"{name}.json"])
    page.wait_for_timeout(150)  # dialogs and toasts open on the next frames
    return page.evaluate(STATE_JS, sorted({node["type"] for node in workflow["nodes"]}))


def close_dialogs(page):
    open_dialogs = "() => [...document.querySelectorAll('.p-dialog')].some(d => d.offsetParent !== null)"
    if page.evaluate(open_dialogs):
        page.keyboard.press("Escape")
        page.wait_for_function(f"() => !({open_dialogs})()", timeout=5_000)


# The preview the frontend adds to Load Video once its file plays: serialized into the prompt as an empty value that
# the server's node definition does not have (the server ignores it).
PREVIEW_WIDGETS = ("video-preview",)


def frontend_prompt(page) -> dict:
    prompt = json.loads(page.evaluate(API_JS))
    for node in prompt.values():
        for name in PREVIEW_WIDGETS:
            if node["inputs"].get(name) == "":
                del node["inputs"][name]
    return prompt


def queue_and_wait(page, comfy_server) -> tuple[str, dict]:
    """Queue the graph in the page as the Run button does; wait for the end; return (prompt_id, outputs)."""
    queued = page.evaluate(QUEUE_JS)
    assert "refused" not in queued and not queued.get("node_errors"), f"the server refused the prompt: {queued}"
    prompt_id = queued["prompt_id"]
    page.wait_for_function("id => !!window.__pnp.done[id]", arg=prompt_id, timeout=RUN_TIMEOUT_MS)
    done = page.evaluate("id => window.__pnp.done[id]", prompt_id)
    assert done["status"] == "success", f"prompt failed: {json.dumps(done)[:2000]}\n{comfy_server.log_tail(3000)}"
    # The server sends execution_success before it files the prompt in /history.
    deadline = time.monotonic() + 30
    while (entry := comfy_server._get(f"/history/{prompt_id}").get(prompt_id)) is None:
        assert time.monotonic() < deadline, f"prompt {prompt_id} never reached /history"
        time.sleep(0.05)
    return prompt_id, entry["outputs"]


def wait_for_images_in_page(page, node_ids: list[str]):
    """The Save Image nodes show their image (the frontend loads previews of nodes it draws: fit the view)."""
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_function(
        "ids => ids.every(id => (app.graph.getNodeById(Number(id))?.imgs || []).some(img => img.complete && img.naturalWidth > 0))",
        arg=node_ids, timeout=30_000)


def wait_for_videos_in_page(page, filenames: list[str]):
    """The Save Video nodes play their file in the page (a <video> element on the /view of it, with its first frame)."""
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_function(
        """names => names.every(name => [...document.querySelectorAll('video')].some(
             v => decodeURIComponent(v.currentSrc || v.src).includes(name) && v.readyState >= 2 && v.videoWidth > 0))""",
        arg=filenames, timeout=30_000)


def screenshot(page, name: str, width: int = 2000, margin: int = 20):
    """The whole graph, as large as fits `width`, without the side bars: docs/screenshots/<name>.png."""
    x0, y0, w, h = page.evaluate("""() => {
      const boxes = [...app.graph.nodes.map(n => [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.size[0],
                                                  n.size[1] + LiteGraph.NODE_TITLE_HEIGHT]),
                     ...app.graph.groups.map(g => [...g._bounding])];
      const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
      return [x0, y0, Math.max(...boxes.map(b => b[0] + b[2])) - x0, Math.max(...boxes.map(b => b[1] + b[3])) - y0];
    }""")
    scale = min((width - 2 * margin) / w, 1.0)
    height = min(1600, round(h * scale) + 2 * margin)
    scale = min(scale, (height - 2 * margin) / h)
    page.set_viewport_size({"width": width, "height": height})
    page.evaluate("() => app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
    try:
        page.wait_for_timeout(300)
        page.evaluate("""([x0, y0, w, h, scale, width, height]) => {
          const ds = app.canvas.ds;
          ds.scale = scale;
          ds.offset[0] = (width - w * scale) / 2 / scale - x0;
          ds.offset[1] = (height - h * scale) / 2 / scale - y0;
          app.canvas.setDirty(true, true);
        }""", [x0, y0, w, h, scale, width, height])
        page.wait_for_function("() => app.graph.nodes.filter(n => n.type === 'LoadImage').every(n => n.imgs?.[0]?.naturalWidth > 0)",
                               timeout=10_000)
        page.wait_for_timeout(300)
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOT_DIR / f"{name}.png"
        page.screenshot(path=str(path))
        with Image.open(path) as shot:  # 256 colours: a third of the size, no visible change for a UI
            shot.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
                path, optimize=True)
    finally:
        page.evaluate("() => app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
        page.set_viewport_size({"width": 1600, "height": 900})


def test_the_missing_node_check_sees_a_missing_node(page):
    """The check below is live: an unknown node type opens the frontend's missing-node dialog."""
    workflow = {"last_node_id": 1, "last_link_id": 0, "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4,
                "nodes": [{"id": 1, "type": "PnPNoSuchNode", "pos": [0, 0], "size": [200, 60], "flags": {}, "order": 0,
                           "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": []}]}
    state = load_in_page(page, workflow, "missing")
    try:
        assert state["unregistered"] == ["PnPNoSuchNode"]
        assert any("PnPNoSuchNode" in text for text in state["dialogs"]), state
    finally:
        close_dialogs(page)


# The Flux workflows first: the server still holds the Flux files that test_flux_graph.py loaded (it keeps the
# outputs of the latest prompt's nodes), and the second Flux workflow reuses the first one's inversion.
FRONTEND_ORDER = sorted(EXPECTED, key=lambda name: name not in (*FLUX_WORKFLOWS, FLOWEDIT_FLUX_WORKFLOW))


@pytest.mark.parametrize("name", FRONTEND_ORDER)
def test_workflow_in_the_frontend(name, page, comfy_server, workflow_runs):
    """The workflow loads without errors, converts as workflow_api does, and queued from the page (shrunk) runs
    and shows its images. The server's run of the same prompt (``workflow_runs``, tests/workflow_runs.py) is the
    server's latest prompt when the page queues it, so the server answers the page from its cache (it keeps the
    outputs of the latest prompt's nodes): each workflow is computed once, and the page still goes through the
    server's validation, its execution messages and /history. (The bank workflow's run 1 computes, since it
    saves a bank of its own and the server run's latest prompt is its run 2.)"""
    workflow = load(name)
    state = load_in_page(page, workflow, name)
    assert state == {"unregistered": [], "nodes_with_errors": [], "dialogs": [], "error_toasts": []}
    if RESAVE:  # as the UI's Export writes it
        exported = page.evaluate("async () => JSON.stringify((await app.graphToPrompt()).workflow, null, 2)")
        (WORKFLOW_DIR / f"{name}.json").write_text(exported + "\n")

    # The frontend converts the graph exactly as workflow_api does (the other tests rely on that).
    prompt = to_api(workflow, comfy_server.object_info())
    assert frontend_prompt(page) == prompt
    if SCREENSHOTS:
        screenshot(page, name)

    overrides = overrides_for_tests(prompt)
    page.evaluate(SET_WIDGETS_JS, overrides)
    assert frontend_prompt(page) == apply_overrides(prompt, overrides) == workflow_runs.prompt(name)
    if name in IN_PROCESS_WORKFLOWS:  # no test file of its family on the server: its graph runs in process
        assert page.evaluate("() => app.graph.nodes.filter(n => n.has_errors).map(n => n.id)") == []
        return

    workflow_runs[name]  # the server's run of this prompt, last in the server's cache (see the docstring)
    prompt_id, outputs = queue_and_wait(page, comfy_server)
    if name == BANK_WORKFLOW:  # run 1 saved a bank; run 2 loads it (as the workflow's note explains)
        (bank,) = [out["text"][0] for out in outputs.values() if "text" in out]
        bank_file = f"pnp-frontend-{Path(bank).name}"
        shutil.copy(comfy_server.output_dir / bank, comfy_server.input_dir / bank_file)
        page.evaluate(BANK_RUN_2_JS, [RUN_1_GROUP, RUN_2_GROUP, bank_file])
        run_2 = to_api(run_2_of_the_bank_workflow(workflow, bank_file), comfy_server.object_info())
        assert frontend_prompt(page) == apply_overrides(run_2, overrides_for_tests(run_2))
        prompt_id, outputs = queue_and_wait(page, comfy_server)
        prompt = run_2
    saves = [node_id for node_id, node in prompt.items() if node["class_type"] in SAVE_TYPES]
    assert saves and all(outputs.get(s, {}).get("images") for s in saves), outputs
    wait_for_images_in_page(page, [s for s in saves if prompt[s]["class_type"] == "SaveImage"])
    videos = [outputs[s]["images"][0]["filename"] for s in saves if prompt[s]["class_type"] == "SaveVideo"]
    wait_for_videos_in_page(page, videos)
    assert page.evaluate("() => app.graph.nodes.filter(n => n.has_errors).map(n => n.id)") == []


def test_converter_matches_the_frontend_on_reroutes_primitives_bypass_and_mute(page, comfy_server):
    """A graph built in the page with what the shipped files do not use: both conversions must agree."""
    workflow = json.loads(page.evaluate("""async () => {
      await app.loadGraphData({nodes: [], links: [], groups: [], version: 0.4, last_node_id: 0, last_link_id: 0,
                               config: {}, extra: {}}, true, false, 'synthetic.json');
      const add = type => { const node = LiteGraph.createNode(type); app.graph.add(node); return node; };
      const input = (node, name) => node.inputs.findIndex(i => i.name === name);
      const ckpt = add('CheckpointLoaderSimple'), reroute1 = add('Reroute'), reroute2 = add('Reroute');
      ckpt.connect(1, reroute1, 0); reroute1.connect(0, reroute2, 0);
      const positive = add('CLIPTextEncode'), negative = add('CLIPTextEncode');
      reroute2.connect(0, positive, 0); reroute1.connect(0, negative, 0);
      const text = add('PrimitiveNode');
      if (!text.connect(0, positive, input(positive, 'text'))) throw new Error('cannot link a primitive to text');
      text.widgets[0].value = 'from a primitive node';
      const empty = add('EmptyLatentImage'), upscale = add('LatentUpscaleBy');
      empty.connect(0, upscale, 0); upscale.mode = 4;  // bypass
      const sampler = add('KSampler');
      ckpt.connect(0, sampler, input(sampler, 'model')); positive.connect(0, sampler, input(sampler, 'positive'));
      negative.connect(0, sampler, input(sampler, 'negative')); upscale.connect(0, sampler, input(sampler, 'latent_image'));
      const seed = add('PrimitiveInt'); seed.widgets[0].value = 7;
      if (!seed.connect(0, sampler, input(sampler, 'seed'))) throw new Error('cannot link a seed');
      const decode = add('VAEDecode'); sampler.connect(0, decode, 0); ckpt.connect(2, decode, 1);
      const save = add('SaveImage'); decode.connect(0, save, 0);
      const muted = add('PreviewImage'); decode.connect(0, muted, 0); muted.mode = 2;  // never (muted)
      add('Note'); add('MarkdownNote');
      return JSON.stringify((await app.graphToPrompt()).workflow);
    }"""))
    expected = frontend_prompt(page)
    assert {n["class_type"] for n in expected.values()} == {
        "CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "PrimitiveInt", "VAEDecode", "SaveImage"}
    assert to_api(workflow, comfy_server.object_info()) == expected


def picture(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def test_every_workflow_has_a_card_drawn_from_its_graph():
    """Each shipped workflow has a card (scripts/draw_cards.py: a title, a one-sentence description, the pack's nodes
    it runs), and workflows/<name>.jpg is that card's drawing, 400 px square. Fails when a workflow comes without a
    card, a card names a node its graph does not run, or a picture is stale (a card edited or a node renamed since:
    run scripts/draw_cards.py, or this test with PNP_SCREENSHOTS=1). A changed digit of a description moves 2e-4 of
    the pixels by more than a quarter of the range; the bound is 5e-5."""
    assert sorted(draw_cards.CARDS) == EXPECTED
    for name, card in draw_cards.CARDS.items():
        drawn = draw_cards.jpeg(draw_cards.draw(card))
        if SCREENSHOTS:
            (WORKFLOW_DIR / f"{name}.jpg").write_bytes(drawn)
        runs = {node["type"] for node in load(name)["nodes"] if node.get("mode", 0) != 4}
        assert set(card.nodes) <= runs, f"{name}'s card names {sorted(set(card.nodes) - runs)}, which its graph lacks"
        assert card.title and card.description.endswith(".") and card.description.count(". ") == 0, name
        shipped = picture((WORKFLOW_DIR / f"{name}.jpg").read_bytes())
        assert shipped.shape == (draw_cards.SIZE, draw_cards.SIZE, 3), name
        moved = float((np.abs(shipped - picture(drawn)) > 0.25).mean())
        assert moved <= 5e-5, (f"workflows/{name}.jpg is not its card's drawing ({moved:.1e} of it differs): "
                               f"run scripts/draw_cards.py")


CARD_NAV = "PnP Diffusion Features"  # locales/en/main.json: templateWorkflows.category.<the pack's folder name>
# One card of the open template browser (the frontend's test id `template-workflow-<name>`), once its picture has
# loaded (pictures load as their cards scroll into view): its title, description, and the picture it shows, as the
# page decoded it (drawn into a canvas, read back as PNG).
CARD_JS = """(card) => {
  const img = card.querySelector('img');
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  canvas.getContext('2d').drawImage(img, 0, 0);
  return {title: card.querySelector('h3')?.innerText, description: card.querySelector('p')?.innerText,
          alt: img.alt, png: canvas.toDataURL('image/png')};
}"""


def test_the_template_browser_shows_each_card(page, comfy_server):
    """The real template browser (Browse Templates): the pack's category is named by the pack's locale file (the
    host's /i18n; otherwise the folder name) and lists one card per shipped workflow, each showing that workflow's
    drawn picture (the bytes of workflows/<name>.jpg, 400x400) with its title and one-line description in it. The
    card's own text is what this frontend makes of the file name (its title, and its description with '-' turned
    into spaces): it reads no title or description for a custom pack's template (scripts/draw_cards.py says where).
    Opening a card loads its workflow. Fails when the category's name, a card or its picture is missing, or a card
    shows another workflow's picture."""
    close_dialogs(page)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.locator(".workflow-template-selector-dialog")
    dialog.get_by_text(CARD_NAV, exact=True).first.click()
    try:
        page.wait_for_function("n => document.querySelectorAll('[data-testid^=\"template-workflow-\"]').length === n",
                               arg=len(EXPECTED), timeout=30_000)
        assert dialog.get_by_text(CARD_NAV, exact=True).count() >= 2  # the nav entry and the section's heading
        listed = page.evaluate("() => [...document.querySelectorAll('[data-testid^=\"template-workflow-\"]')]"
                               ".map(c => c.dataset.testid.replace('template-workflow-', '')).sort()")
        assert listed == EXPECTED
        for name in EXPECTED:
            card = dialog.locator(f'[data-testid="template-workflow-{name}"]')
            card.scroll_into_view_if_needed()
            card.locator("img").wait_for(timeout=15_000)
            page.wait_for_function("c => c.querySelector('img').complete && c.querySelector('img').naturalWidth > 0",
                                   arg=card.element_handle(), timeout=15_000)
            shown = card.evaluate(CARD_JS)
            assert shown["title"] == name and shown["description"] == name.replace("-", " ") and shown["alt"] == name
            pixels = picture(base64.b64decode(shown.pop("png").split(",", 1)[1]))
            expected = picture((WORKFLOW_DIR / f"{name}.jpg").read_bytes())
            assert pixels.shape == expected.shape == (draw_cards.SIZE, draw_cards.SIZE, 3), (name, pixels.shape)
            moved = float((np.abs(pixels - expected) > 0.25).mean())  # two JPEG decoders: a few values apart at most
            assert moved <= 5e-5, f"the card of {name} does not show workflows/{name}.jpg ({moved:.1e} differs)"
        dialog.locator('[data-testid="template-workflow-pnp-basic"]').click()  # open it, as a user does
        page.wait_for_function("() => !document.querySelector('.workflow-template-selector-dialog')", timeout=30_000)
        page.wait_for_function("n => app.graph.nodes.length === n", arg=len(load("pnp-basic")["nodes"]), timeout=30_000)
        shown_types = page.evaluate("() => app.graph.nodes.map(n => n.type).sort()")
        assert shown_types == sorted(node["type"] for node in load("pnp-basic")["nodes"])
    finally:
        close_dialogs(page)


# What a user types to find the flow wing's nodes, and a node each query must list.
SEARCHES = {"hunyuan": "PnP Flux/Chroma/HunyuanVideo Inversion (RF-Solver)",
            "video": "PnP Flux/Chroma/HunyuanVideo Sampler",
            "chroma": "PnP Flux/Chroma/HunyuanVideo Inversion (FireFlow)",
            "flux": "PnP Flux/Chroma/HunyuanVideo Sampler"}


def test_the_node_search_finds_the_flow_nodes_by_family(page):
    """The real node search box (double-click on the canvas, as a user opens it): typing a family's name lists the
    flow wing's nodes among what it shows. Fails when a display name stops carrying the families, or carries them
    too far from the name's start for the frontend's fuzzy search to weigh them."""
    close_dialogs(page)
    page.evaluate("() => app.graph.clear()")
    box = page.locator(".comfy-vue-node-search-container input").first
    try:
        for query, expected in SEARCHES.items():
            canvas = page.locator("#graph-canvas")
            canvas.dblclick(position={"x": 400, "y": 300})
            box.wait_for(timeout=10_000)
            box.fill(query)
            page.wait_for_function("() => document.querySelectorAll('.option-display-name').length > 0",
                                   timeout=10_000)
            page.wait_for_timeout(300)  # the list settles after the last keystroke
            shown = page.evaluate("() => [...document.querySelectorAll('.option-display-name')]"
                                  ".map(e => e.textContent.trim())")
            assert any(name.startswith(expected) for name in shown), (query, shown)
            page.keyboard.press("Escape")
            box.wait_for(state="hidden", timeout=10_000)
    finally:
        close_dialogs(page)


def test_no_uncaught_errors_from_the_pack(page):
    """Uncaught page errors that name the pack or its nodes (the frontend's own are not ours to judge)."""
    ours = [e for e in page.pnp_errors if "PnP" in e or "pnp" in e]
    assert ours == []
