"""slimembed.search: OptEmbed's supernet + evolutionary search pipeline (and, later, sweeps and reports).

Usage (trains models, so not a doctest)::

    from slimembed.search import run_pipeline
    summary = run_pipeline("optembed.yaml")      # supernet -> search -> retrain -> export
"""

from .optembed import (
    STAGES,
    EvolutionSearch,
    OptEmbedConfig,
    OptEmbedPipeline,
    crossover,
    crossover_point,
    load_exported,
    load_pipeline_config,
    mutate,
    optembed_regularizer,
    optembed_table_factory,
    optembed_tables,
    random_candidate,
    run_pipeline,
    summarize,
    supernet_optimizers,
)

__all__ = [
    "STAGES",
    "EvolutionSearch",
    "OptEmbedConfig",
    "OptEmbedPipeline",
    "crossover",
    "crossover_point",
    "load_exported",
    "load_pipeline_config",
    "mutate",
    "optembed_regularizer",
    "optembed_table_factory",
    "optembed_tables",
    "random_candidate",
    "run_pipeline",
    "summarize",
    "supernet_optimizers",
]
