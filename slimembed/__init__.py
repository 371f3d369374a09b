"""slimembed: memory-efficient embedding tables for click-through-rate models.

Subpackages: :mod:`slimembed.tables` (compressed tables), :mod:`slimembed.ctr` (models, trainer,
CLI), :mod:`slimembed.datasets` (Criteo-like data), :mod:`slimembed.search` (OptEmbed, sweeps).
"""

__version__ = "0.1.0"
