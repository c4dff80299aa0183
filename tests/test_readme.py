"""The front page (README.md) and the docs/ pages against the code: what a newcomer reads must be what the pack
does. Each test names what would make it fail; all of them read files and node schemas only (no model work).

The README's node tables are the part written for checking: one row per node, `| **<display name>** | what it
does | <key defaults> |`, the defaults as backticked `input=value` items. Its "Which method?" table gives one
row per method, with the model evaluations per edit (the first number of that cell) and the bank's size at
the README's sizes, both recomputed here from the pack's own settings and layer tables.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

import harness
from comfyui_pnp.nodes import NODES
from comfyui_pnp.pnp_injection.flow import layers as flow_layers
from comfyui_pnp.pnp_injection.flow import official
from comfyui_pnp.pnp_injection.flow.bank import slot_count
from comfyui_pnp.pnp_injection.unet import layers as unet_layers
from comfyui_pnp.pnp_injection.velocity import flowedit, rf_inversion, uniedit

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
HELP_PAGES = ROOT / "web" / "docs"
MAX_LINES = 300
# The two set-up commands, byte for byte as they have always been: .ci/run runs the second, users copy both.
START_LINE = ("bash scripts/start.sh    # set up (first run only) and start ComfyUI with this pack on "
              "http://127.0.0.1:8188")
TEST_LINE = "bash scripts/test.sh     # set up (first run only) and run the whole test suite"
# Display names the flow wing's nodes had before they were named for the families they serve (the node ids
# stayed, so saved workflows load): none may be advertised any more.
RENAMED = ("PnP Flux Inversion (RF-Solver)", "PnP Flux Inversion (FireFlow)", "PnP Flux Inversion", "PnP Flux Sampler",
           "PnP Flux Apply Feature Injection", "PnP Flux Noise", "PnP Flux Save Feature Bank",
           "PnP Flux Load Feature Bank", "PnP Flux Feature Preview")
# The "Which method?" table: method -> its docs page, in the table's order.
METHODS = {"U-Net PnP": "docs/pnp.md", "RF-Solver-Edit": "docs/rf-solver-edit.md", "FireFlow": "docs/fireflow.md",
           "KV-Edit": "docs/kv-edit.md", "HunyuanVideo video edit (RF-Solver-Edit)": "docs/hunyuan-video.md",
           "FlowEdit": "docs/flowedit.md", "UniEdit-Flow": "docs/uniedit-flow.md", "RF-Inversion": "docs/rf-inversion.md"}
BOLD = re.compile(r"\*\*([^*]+)\*\*")
DEFAULT = re.compile(r"`(\w+)=([^`]*)`")


def readme() -> str:
    return README.read_text(encoding="utf-8")


def schemas() -> list:
    return [node.define_schema() for node in NODES]


def current_names() -> set[str]:
    return {s.display_name for s in schemas() if not s.is_deprecated}


def deprecated_names() -> set[str]:
    return {s.display_name for s in schemas() if s.is_deprecated}


def looks_like_a_node(name: str) -> bool:
    return name.startswith("PnP ") or name.endswith(("(PnP)", "(PnP Flux)"))


def section(text: str, heading: str) -> str:
    """The body of a `## heading` section."""
    assert f"\n## {heading}\n" in text, f"README has no '## {heading}' section"
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(body: str) -> list[list[str]]:
    """The cells of each table row of `body` (header and rule lines left out)."""
    rows = []
    for line in body.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-| ]+\|", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return [row for row in rows if row[0] not in ("node", "method")]


def bold_names(text: str) -> set[str]:
    """Bold spans that look like node names, their line breaks read as spaces."""
    return {name for name in (" ".join(b.split()) for b in BOLD.findall(text)) if looks_like_a_node(name)}


def renamed_uses(text: str, allowed: set[str] | None = None) -> list[str]:
    """Places where an old display name is used, not merely the start of an allowed one (by default the current
    names: "PnP Flux Sampler" inside "PnP Flux Sampler (KV-Edit)" is a current name)."""
    text = " ".join(text.split())
    longer = sorted(current_names() if allowed is None else allowed, key=len, reverse=True)
    found = []
    for old in RENAMED:
        for match in re.finditer(re.escape(old), text):
            rest = text[match.start():]
            if not any(rest.startswith(name) and len(name) > len(old) for name in longer):
                found.append(f"{old!r} at {text[max(0, match.start() - 30):match.end() + 20]!r}")
    return found


def test_the_front_page_is_short():
    """Fails when the README grows past a five-minute read: depth belongs in docs/."""
    lines = len(readme().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines; move detail into a docs/ page (at most {MAX_LINES})"


def test_every_node_named_exists_and_none_deprecated_or_renamed():
    """Every bold name that looks like a node, and every node the method table starts with, is a current display
    name; no deprecated or former name appears. Fails on a typo, a renamed node or an advertised deprecated one."""
    text, names = readme(), current_names()
    bold = bold_names(text)
    starts = {row[5] for row in table_rows(section(text, "Which method?"))}
    unknown = sorted((bold | starts) - names)
    assert not unknown, f"README names nodes that do not exist (display names: {sorted(names)}): {unknown}"
    advertised = [name for name in deprecated_names() if name in text]
    assert not advertised, f"README advertises deprecated nodes: {advertised}"
    assert not renamed_uses(text), f"README uses former display names: {renamed_uses(text)}"


def test_every_node_of_the_pack_is_on_the_front_page():
    """Fails when a node is added (or renamed) without its line in the README's node tables."""
    rows = {row[0] for row in table_rows(section(readme(), "Nodes"))}
    missing = sorted(name for name in current_names() if f"**{name}**" not in rows)
    assert not missing, f"README's Nodes section lacks a row for {missing}"


def test_the_defaults_stated_are_the_schemas():
    """Each `input=value` of a node row is that input's default in the node's schema, and every input whose
    default is -1 (auto) is stated. Fails when a default changes in the code or the README."""
    by_name = {s.display_name: s for s in schemas()}
    problems, checked = [], 0
    for row in table_rows(section(readme(), "Nodes")):
        name = BOLD.fullmatch(row[0]).group(1)
        inputs = {i.id: getattr(i, "default", None) for i in by_name[name].inputs}
        stated = dict(DEFAULT.findall(row[-1]))
        for key, value in stated.items():
            if key not in inputs:
                problems.append(f"{name}: no input `{key}`")
                continue
            default = inputs[key]
            same = value == default if isinstance(default, str) else (
                default is not None and not isinstance(value, bool) and _number(value) == float(default))
            problems += [] if same else [f"{name}: README says `{key}={value}`, the schema's default is {default!r}"]
            checked += 1
        problems += [f"{name}: `{key}` defaults to -1 (auto) and is not stated" for key, default in inputs.items()
                     if isinstance(default, (int, float)) and default == -1 and key not in stated]
    assert not problems, "\n".join(problems)
    assert checked >= 60, f"only {checked} defaults read: the node tables lost their `input=value` items"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def test_the_auto_values_are_the_official_ones():
    """The flow wing's -1 (auto) values as the README's Nodes section states them are
    pnp_injection/flow/official.py's. Fails when either changes alone."""
    intro = section(readme(), "Nodes").split("\n|", 1)[0]  # the paragraph before the first node table
    text = " ".join(intro.split())
    for settings in (official.RF_SOLVER_EDIT, official.RF_SOLVER_EDIT_VIDEO, official.FIREFLOW):
        phrase = f"{settings.steps} steps, {settings.inject} injected, guidance {settings.guidance:g}"
        assert phrase in text, f"README does not state the auto values {phrase!r} (flow/official.py)"


def test_the_which_method_table_follows_the_code():
    """One row per method in order, each linking its docs page; its evaluations per edit and bank sizes recomputed
    from the pack's defaults, official settings and layer tables. Fails when a figure drifts from the code."""
    rows = table_rows(section(readme(), "Which method?"))
    assert [row[0] for row in rows] == list(METHODS), f"methods in the table: {[row[0] for row in rows]}"
    for row in rows:
        assert f"]({METHODS[row[0]]})" in row[-1], f"{row[0]}: the page column should link {METHODS[row[0]]}"
    by_name = {s.node_id: {i.id: getattr(i, "default", None) for i in s.inputs} for s in schemas()}
    inversion, capture, kv = by_name["PnPInversion"], by_name["PnPCaptureFeatures"], by_name["PnPFluxKVEditInversion"]
    steps = inversion["steps"]
    first_timestep = 1000 - 1000 // steps + 1  # ddim_uniform's first sampling timestep: the 999-step walk's length
    source_passes = max(int(steps * capture["feature_steps"]), int(steps * capture["attention_steps"]))
    k = round(uniedit.ALPHA * uniedit.STEPS)  # the FLUX rule's delay on Flux.1
    evaluations = {
        "U-Net PnP": first_timestep + source_passes + 2 * steps,
        "RF-Solver-Edit": 4 * official.RF_SOLVER_EDIT.steps,
        "FireFlow": 2 * (official.FIREFLOW.steps + 1),
        "KV-Edit": kv["steps"] + kv["steps"] - kv["skip_steps"],
        "HunyuanVideo video edit (RF-Solver-Edit)": 4 * official.RF_SOLVER_EDIT_VIDEO.steps,
        "FlowEdit": 2 * flowedit.FLUX.n_avg * flowedit.FLUX.n_max,
        "UniEdit-Flow": (k + 1) + 2 * k,
        "RF-Inversion": 2 * rf_inversion.STEPS,
    }
    for row in rows:
        first = int(re.search(r"\d+", row[2]).group())
        assert first == evaluations[row[0]], f"{row[0]}: README says {first} evaluations, the code gives {evaluations[row[0]]}"

    def gib(sites, tokens, slots):  # bf16, 3072 wide (Flux.1 and HunyuanVideo)
        return f"{sites * tokens * 3072 * slots * 2 / 2**30:.2f} GiB"
    rf, video = official.RF_SOLVER_EDIT, official.RF_SOLVER_EDIT_VIDEO
    flux_tokens, video_tokens = 4096 + 256, 20 * 30 * 30 + 256  # 1024x1024; 77 frames at 480x480, text padded
    memory = {
        "U-Net PnP": [f"{harness.README_BANK_MIB[(arch, torch.float16)]} MiB" for arch in ("sd15", "sdxl")],
        "RF-Solver-Edit": [gib(len(flow_layers.PRESETS["rf-solver-edit"].sites), flux_tokens,
                               slot_count("rf_solver", rf.steps, rf.inject))],
        "FireFlow": [gib(len(flow_layers.PRESETS["fireflow"].sites), flux_tokens,
                         slot_count("fireflow", official.FIREFLOW.steps, official.FIREFLOW.inject))],
        "KV-Edit": [gib(2 * (19 + 38), 4096 // 2, kv["steps"] - kv["skip_steps"])],  # K and V, every block, half mask
        "HunyuanVideo video edit (RF-Solver-Edit)": [
            gib(len(flow_layers.HUNYUAN_RF_SOLVER_EDIT.sites), video_tokens, slot_count("rf_solver", video.steps, kept))
            for kept in (video.inject, 5)],
    }
    for row in rows:
        for figure in memory.get(row[0], ["no bank"]):
            assert figure in row[3], f"{row[0]}: the memory cell {row[3]!r} should give {figure}"


def test_every_workflow_is_listed():
    """Fails when a workflow is added, renamed or removed without the README's list following."""
    listed = set(re.findall(r"\]\(workflows/([\w.-]+\.json)\)", readme()))
    shipped = {p.name for p in (ROOT / "workflows").glob("*.json")}
    assert listed == shipped, f"not listed: {sorted(shipped - listed)}; listed but absent: {sorted(listed - shipped)}"


def test_every_docs_page_exists_and_is_linked():
    """Every docs/ page the README links exists, and every docs/*.md is linked from the README. Fails on a dead
    link or an orphan page."""
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]+)?\)", readme()))
    dead = sorted(page for page in linked if not (ROOT / page).is_file())
    assert not dead, f"README links pages that do not exist: {dead}"
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert pages - linked == set(), f"docs pages the README does not link: {sorted(pages - linked)}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_docs_pages_resolve():
    """Each relative link of a docs page (to a page, a page's heading, a workflow or a picture) resolves, and no
    page uses a former node name. Fails on a dead link or anchor."""
    problems = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        problems += [f"{page.name}: {use}" for use in renamed_uses(text, current_names() | deprecated_names())]
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.is_file():
                problems.append(f"{page.name}: dead link {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), re.M)
                if anchor not in {slug(h) for h in headings}:
                    problems.append(f"{page.name}: no heading #{anchor} in {file.name}")
        problems += [f"{page.name}: **{b}** is no node" for b in bold_names(text)
                     if b not in current_names() | deprecated_names()]
    assert not problems, "\n".join(problems)


def test_every_help_page_links_its_method_page():
    """Each node's help page (web/docs/<node id>.md) ends with a "More:" line whose docs pages exist, and uses no
    former display name. Fails when a help page loses it, names a page that does not exist or a renamed node."""
    problems = []
    for page in sorted(HELP_PAGES.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        problems += [f"{page.name}: {use}" for use in renamed_uses(text, current_names() | deprecated_names())]
        more = [line for line in text.splitlines() if line.startswith("More: ")]
        targets = re.findall(r"\[(docs/[\w.-]+\.md)\]", more[0]) if more else []
        if not targets:
            problems.append(f"{page.name}: no 'More: docs/<page>.md' line")
        problems += [f"{page.name}: {t} does not exist" for t in targets if not (ROOT / t).is_file()]
    assert not problems, "\n".join(problems)


def test_every_layer_preset_is_named():
    """The layer presets of both wings (what the `layers` inputs offer) all appear on the front page. Fails when a
    preset is added or renamed."""
    text = readme()
    missing = [name for name in [*unet_layers.PRESET_NAMES, *flow_layers.PRESET_NAMES] if f"`{name}`" not in text]
    assert not missing, f"README does not name the layer presets {missing}"


def test_the_set_up_commands_are_the_scripts():
    """The two commands are on the front page byte for byte, in one bash block; the scripts exist; .ci/run runs
    the README's test command and start.sh serves the port the README names. Fails if any side changes alone."""
    text = readme()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and block.group(1).splitlines() == [START_LINE, TEST_LINE], (
        f"README's first bash block must be exactly:\n{START_LINE}\n{TEST_LINE}")
    for line in (START_LINE, TEST_LINE):
        script = line.split()[1]
        assert (ROOT / script).is_file(), f"{script} does not exist"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [TEST_LINE.split("#")[0].strip()], f".ci/run runs {ci}, not the README's test command"
    port = re.search(r"127\.0\.0\.1:(\d+)", START_LINE).group(1)
    assert f"port {port}" in (ROOT / "scripts" / "start.sh").read_text(), f"start.sh does not default to port {port}"


BENCH_FIGURES = ("17.93 GiB", "17.89 GiB", "0.13 GiB", "0.49 GiB", "32.06 GiB", "0.10 GiB", "1.36 GiB", "19.85 GiB",
                 "0.11 GiB", "2.03 GiB")


def test_the_measured_placement_figures_are_on_the_banks_page():
    """bench/bench_bank_placement.py's measured figures (its output on the CPU machine) stand on docs/banks.md with
    the command that printed them. Fails when the page loses them."""
    text = (DOCS / "banks.md").read_text(encoding="utf-8")
    assert "bench/bench_bank_placement.py" in text
    missing = [figure for figure in BENCH_FIGURES if figure not in text]
    assert not missing, f"docs/banks.md lacks the measured figures {missing}"


CITATION = re.compile(r"(docs/[\w.-]+\.md),? sections? (\d+)(?: and (\d+))?")


def test_code_comments_cite_docs_sections_that_exist():
    """The engine's comments cite the algorithm by docs page and numbered section ("docs/pnp.md, section 3"):
    each cited page exists and has a "## N." heading. Fails when a page is renumbered or a citation names a
    section that is not there."""
    problems, cited = [], 0
    for path in sorted([*(ROOT / "pnp_injection").rglob("*.py"), *(ROOT / "nodes").rglob("*.py"),
                        *(ROOT / "tests").glob("*.py")]):
        text = " ".join(path.read_text(encoding="utf-8").split())
        for page, *numbers in CITATION.findall(text):
            target = ROOT / page
            headings = re.findall(r"^## (\d+)\. ", target.read_text(encoding="utf-8"), re.M) if target.is_file() else []
            problems += [f"{path.name}: {page} section {n}" for n in numbers if n and n not in headings]
            cited += 1
    assert cited >= 8, f"only {cited} citations found: the pattern no longer matches how comments cite"
    assert not problems, f"citations of sections that do not exist: {problems}"
