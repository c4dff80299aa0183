"""Many alternating PnP and plain runs through one server: plain outputs never change and
memory stays flat (no bank, hook or patch accumulates)."""
import hashlib

import psutil
import pytest
from PIL import Image

from comfy_server import CHECKPOINT_NAME
from workflow_runs import decode_and_save, pnp_graph

RUNS = 100


def plain_graph(seed: int) -> dict:
    """A plain sampler from a fixed latent with noise disabled: the noise seed changes (so the
    node re-runs instead of coming from the cache) but the output must not."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "text": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "noise": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["text", 0], "negative": ["text", 0], "latent_image": ["latent", 0],
            "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "sample": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["ckpt", 0], "add_noise": "disable", "noise_seed": seed, "steps": 3, "cfg": 7.5,
            "sampler_name": "euler", "scheduler": "normal", "positive": ["text", 0], "negative": ["text", 0],
            "latent_image": ["noise", 0], "start_at_step": 0, "end_at_step": 10000,
            "return_with_leftover_noise": "disable"}},
        **decode_and_save(["sample", 0], f"soak-plain-{seed}"),
    }


def pnp_run(i: int) -> dict:
    graph = pnp_graph({
        "pnp": {"class_type": "PnPSampler", "inputs": {
            "model": ["ckpt", 0], "feature_bank": ["capture", 0], "positive": ["target", 0],
            "negative": ["negative", 0], "cfg": 7.5, "feature_injection": 0.8, "attention_injection": 0.5,
            "sampler_name": "ddim"}},
        **decode_and_save(["pnp", 0], f"soak-pnp-{i}"),
    })
    graph["target"]["inputs"]["text"] = f"a watercolor painting, variant {i}"  # re-runs the sampler
    return graph


@pytest.mark.slow
def test_alternating_runs_keep_plain_outputs_identical_and_memory_flat(comfy_server):
    process = psutil.Process(comfy_server.process.pid)
    digests, rss = set(), []
    for i in range(RUNS // 2):
        comfy_server.run(pnp_run(i), timeout=300)
        (file,) = comfy_server.output_files(comfy_server.run(plain_graph(1000 + i), timeout=300))
        pixels = Image.open(file).convert("RGB").tobytes()  # the PNG's text chunk holds the prompt
        digests.add(hashlib.sha256(pixels).hexdigest())
        rss.append(process.memory_info().rss)
    assert len(digests) == 1, "a plain run changed after PnP runs"
    growth = rss[-1] - rss[len(rss) // 5]
    print(f"\nserver resident memory: {rss[len(rss) // 5] / 2**20:.0f} MiB after {RUNS // 5} runs, "
          f"{rss[-1] / 2**20:.0f} MiB after {RUNS}")
    assert growth < 150 * 2**20, f"resident memory grew by {growth / 2**20:.0f} MiB over {RUNS} runs"
