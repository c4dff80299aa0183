"""The flow-transformer wing: rectified-flow inversion with the source's features kept on the
way (RF-Solver-Edit, FireFlow; KV-Edit on Flux.1), its solvers, site tables, injection and
feature previews, for Flux.1, Chroma, Flux.2 and HunyuanVideo (`families.FAMILIES`)."""
