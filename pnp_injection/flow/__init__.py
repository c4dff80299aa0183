"""The flow-transformer wing: rectified-flow inversion with the source's features kept on the
way (RF-Solver-Edit), its solvers, site tables and injection, for Flux.1."""
