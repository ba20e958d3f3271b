"""Batch selection from a candidate pool: the pool streamed (:mod:`.pools`), screened
(:mod:`.screening`), and a batch picked (:mod:`.batch`, :mod:`.greedy`)."""

from .batch import METHODS, select
from .greedy import greedy_distance, greedy_maxdet
from .pools import Pool, is_database, pick, stream
from .screening import (
           DiverseScreen,
           candidate_rows,
           pool_features,
           pool_rows,
           score_pool,
           screen,
           selection_posterior,
)

__all__ = ["METHODS", "DiverseScreen", "Pool", "candidate_rows", "greedy_distance", "greedy_maxdet", "is_database",
           "pick", "pool_features", "pool_rows", "score_pool", "screen", "select", "selection_posterior", "stream"]
