"""Architecture search: Candidate enumeration, Random, Fast, Evolved, and a Pareto (NSGA-II) step.

All methods share the latency window of the original (`window`): an arch is feasible when its
predicted latency lies in [0.85, 1.1] x (T_base / speedup), T_base being the reference latency
measured on the machine (recorded in time.pt).

- `candidates`: every grid arch in the window (interpolated on large grids), candidate files.
- `evolution`: Random and Fast (drawn from the candidates), Evolved (the original's evolver).
- `pareto`: NSGA-II selection over (predicted latency, fitness) with a latency ceiling.
- `measure`: searched archs timed for real beside the reference.
- `plot`: fitness against predicted latency of a step.
- `command`: searcher.py's `SearchConfig` and `search_command`.
"""
from ..arch import FINE_STEPS, ORIGINAL_STEPS
from .candidates import (CandidateSet, enumerate_candidates, format_candidate_lines,
                         read_candidates, write_candidates)
from .command import (METHODS, Generation, SearchConfig, build_space, build_window,
                      load_predictor, next_generation, search_command, write_candidate_file)
from .evolution import Evolver, MutationGrid, is_efficient, roulette, sample_generation
from .measure import Measured, measure_archs, reference_arch, reference_name
from .pareto import ParetoEvolver, crowding, non_dominated_sort
from .plot import plot_generation
from .window import LatencyWindow

__all__ = [
    "FINE_STEPS", "METHODS", "ORIGINAL_STEPS", "CandidateSet", "Evolver", "Generation",
    "LatencyWindow", "Measured", "MutationGrid", "ParetoEvolver", "SearchConfig", "build_space",
    "build_window", "crowding", "enumerate_candidates", "format_candidate_lines",
    "is_efficient", "load_predictor", "measure_archs", "next_generation", "non_dominated_sort",
    "plot_generation", "read_candidates", "reference_arch", "reference_name", "roulette",
    "sample_generation", "search_command", "write_candidate_file",
    "write_candidates",
]
