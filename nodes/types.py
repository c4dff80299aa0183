"""The pack's own socket types."""
from comfy_api.latest import io

Trajectory = io.Custom("PNP_TRAJECTORY")
FeatureBank = io.Custom("PNP_FEATURE_BANK")

CATEGORY = "sampling/pnp"
