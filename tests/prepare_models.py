"""Make the random-weight model files the tests load (tests/checkpoint_factory.py, tests/flux_files.py,
tests/velocity_files.py)
before the suite runs, two at a time: `scripts/setup.sh --test` calls it, so that the suite's time is
the tests'. Files already in .cache/test-models/ are kept; the tests make any that is missing.

    .venv/bin/python tests/prepare_models.py
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_factory import MODELS, cached_checkpoint  # noqa: E402
from flux_files import FLUX_FILES, cached_flux_file  # noqa: E402
from velocity_files import VELOCITY_FILES, cached_velocity_file  # noqa: E402


def main() -> None:
    start = time.perf_counter()
    jobs = [(cached_checkpoint, name) for name in MODELS] + [(cached_flux_file, name) for name in FLUX_FILES]
    jobs += [(cached_velocity_file, name) for name in VELOCITY_FILES]  # after the Flux files they copy from
    with ThreadPoolExecutor(max_workers=2) as pool:  # each file is made in a child process
        paths = list(pool.map(lambda job: job[0](job[1]), jobs))
    print(f"test models ready in {time.perf_counter() - start:.0f} s: {', '.join(p.name for p in paths)}")


if __name__ == "__main__":
    main()
