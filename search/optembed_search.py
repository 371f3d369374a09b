"""OptEmbed's evolutionary search over per-field embedding dims (stage 2 of
:mod:`slimembed.search.optembed`, which re-exports these names; its docstring gives the
algorithm and where it differs from the reference code on purpose).

A candidate is a ``[F]`` long tensor of dims ``k_f`` in ``1..D``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------- evolution
def random_candidate(num_fields: int, max_dim: int, generator: torch.Generator) -> Tensor:
    """Uniform dims in ``1..max_dim`` per field: ``LongTensor[F]``."""
    return torch.randint(1, max_dim + 1, (num_fields,), generator=generator)


def mutate(parent: Tensor, max_dim: int, prob: float, generator: torch.Generator) -> Tensor:
    """A new candidate: each field of ``parent`` reset with probability ``prob`` to a uniform dim
    in ``1..max_dim`` (1 included). ``parent`` is not modified."""
    reset = torch.rand(parent.shape, generator=generator) < prob
    fresh = torch.randint(1, max_dim + 1, parent.shape, generator=generator)
    return torch.where(reset, fresh, parent.clone())


def crossover(a: Tensor, b: Tensor, point: int) -> Tensor:
    """Single-point crossover over the field axis: ``a[:point]`` followed by ``b[point:]`` (new)."""
    if not 0 <= point <= a.numel():
        raise ValueError(f"crossover point {point} outside [0, {a.numel()}]")
    return torch.cat([a[:point], b[point:]]).clone()


def crossover_point(num_fields: int, generator: torch.Generator) -> int:
    """A cut in ``1..F-1`` (both parents contribute); 1 when ``F == 1``."""
    if num_fields < 2:
        return 1
    return int(torch.randint(1, num_fields, (1,), generator=generator))


class EvolutionSearch:
    """Evolutionary search over per-field dims (OptEmbed stage 2), correct and resumable.

    Each generation: evaluate the population (fitness cached per candidate; infeasible ones get
    ``-inf`` without evaluation), sort by fitness (descending, stable), update the best-so-far
    from the *sorted* list, then breed the next population from the top ``parents``:
    ``keep_num`` elites (copies) + ``mutation_num`` mutations (parent ``i % parents``) +
    ``crossover_num`` crossovers of two distinct parents at a cut over the field axis. No
    candidate is ever modified in place.

    Args:
        fitness: ``dims LongTensor[F] -> float`` (higher is better; NaN counts as ``-inf``).
        num_fields: ``F``. max_dim: ``D`` (dims lie in ``1..D``).
        feasible: optional ``dims -> bool``; infeasible candidates score ``-inf``.
        seed: the RNG seed (a ``torch.Generator``; its state is part of :meth:`state_dict`).

    Example::

        >>> es = EvolutionSearch(lambda c: -float((c - 3).abs().sum()), num_fields=5, max_dim=8)
        >>> best, fit = es.run(10)
    """

    def __init__(
        self,
        fitness: Callable[[Tensor], float],
        num_fields: int,
        max_dim: int,
        mutation_num: int = 10,
        crossover_num: int = 10,
        parents: int = 10,
        keep_num: int = 0,
        mutation_prob: float = 0.1,
        feasible: Optional[Callable[[Tensor], bool]] = None,
        seed: int = 0,
        initial: Optional[Sequence[Tensor]] = None,
    ) -> None:
        if num_fields < 1 or max_dim < 1:
            raise ValueError("num_fields and max_dim must be >= 1")
        self.fitness_fn = fitness
        self.num_fields = int(num_fields)
        self.max_dim = int(max_dim)
        self.mutation_num = int(mutation_num)
        self.crossover_num = int(crossover_num)
        self.parents = int(parents)
        self.keep_num = int(keep_num)
        self.mutation_prob = float(mutation_prob)
        self.feasible = feasible
        self.generator = torch.Generator().manual_seed(int(seed))
        self.generation = 0  # finished generations
        self.best: Optional[Tensor] = None
        self.best_fitness = -math.inf
        self.history: List[Dict[str, Any]] = []
        self.cache: Dict[Tuple[int, ...], float] = {}
        self.evaluations = 0
        self.population: List[Tensor] = (
            [torch.as_tensor(c, dtype=torch.long).clone() for c in initial] if initial is not None
            else self.initial_population()
        )

    @property
    def population_size(self) -> int:
        return self.keep_num + self.mutation_num + self.crossover_num

    # ------------------------------------------------------------------ breeding
    def _is_feasible(self, cand: Tensor) -> bool:
        return True if self.feasible is None else bool(self.feasible(cand))

    def initial_population(self) -> List[Tensor]:
        """``population_size`` uniform random candidates (feasible ones when a constraint is set:
        rejection sampling, then sampling under a shrinking dim cap)."""
        pop = []
        for _ in range(self.population_size):
            cand = random_candidate(self.num_fields, self.max_dim, self.generator)
            cap, tries = self.max_dim, 0
            while not self._is_feasible(cand):
                tries += 1
                if tries > 50:
                    cap = max(1, cap // 2)
                if tries > 1000:
                    raise ValueError("no feasible candidate found: the constraint rejects even small dims")
                cand = random_candidate(self.num_fields, cap, self.generator)
            pop.append(cand)
        return pop

    def breed(self, ranked: Sequence[Tensor]) -> List[Tensor]:
        """The next population from candidates sorted best first."""
        top = list(ranked[: self.parents])
        nxt = [c.clone() for c in ranked[: self.keep_num]]
        for i in range(self.mutation_num):
            nxt.append(mutate(top[i % len(top)], self.max_dim, self.mutation_prob, self.generator))
        for _ in range(self.crossover_num):
            if len(top) >= 2:
                x, y = torch.randperm(len(top), generator=self.generator)[:2].tolist()
            else:
                x = y = 0
            point = crossover_point(self.num_fields, self.generator)
            nxt.append(crossover(top[x], top[y], point))
        return nxt

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, cand: Tensor) -> float:
        key = tuple(int(v) for v in cand.tolist())
        if key not in self.cache:
            if not self._is_feasible(cand):
                fit = -math.inf
            else:
                fit = float(self.fitness_fn(cand.clone()))
                self.evaluations += 1
                if math.isnan(fit):
                    fit = -math.inf
            self.cache[key] = fit
        return self.cache[key]

    def step(self, breed: bool = True) -> Dict[str, Any]:
        """Evaluate the population, update the best, breed the next one. Returns the log entry."""
        fits = [self.evaluate(c) for c in self.population]
        order = sorted(range(len(fits)), key=lambda i: -fits[i])  # stable, best first
        ranked = [self.population[i] for i in order]
        ranked_fit = [fits[i] for i in order]
        if ranked_fit[0] > self.best_fitness:
            self.best_fitness = ranked_fit[0]
            self.best = ranked[0].clone()
        finite = [f for f in fits if math.isfinite(f)]
        entry = {
            "generation": self.generation,
            "best": ranked_fit[0],
            "worst": ranked_fit[-1],
            "mean": sum(finite) / len(finite) if finite else None,
            "infeasible": len(fits) - len(finite),
            "best_so_far": self.best_fitness,
            "best_dims": None if self.best is None else self.best.tolist(),
            "evaluations": self.evaluations,
        }
        self.history.append(entry)
        self.generation += 1
        if breed:
            self.population = self.breed(ranked)
        return entry

    def run(self, generations: int, on_generation: Optional[Callable[["EvolutionSearch"], None]] = None,
            progress: bool = False) -> Tuple[Optional[Tensor], float]:
        """Run until ``generations`` generations are finished (counting those already done, so a
        restored search continues). ``on_generation(self)`` runs after each (checkpointing)."""
        from tqdm.auto import tqdm

        bar = tqdm(total=generations, initial=min(self.generation, generations), desc="evolution",
                   disable=not progress, dynamic_ncols=True, leave=False)
        try:
            while self.generation < generations:
                entry = self.step()
                bar.update(1)
                bar.set_postfix(best=f"{entry['best_so_far']:.5f}")
                if on_generation is not None:
                    on_generation(self)
        finally:
            bar.close()
        return (None if self.best is None else self.best.clone()), self.best_fitness

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return {
            "generation": self.generation,
            "population": [c.clone() for c in self.population],
            "best": None if self.best is None else self.best.clone(),
            "best_fitness": self.best_fitness,
            "history": copy.deepcopy(self.history),
            "cache": dict(self.cache),
            "evaluations": self.evaluations,
            "rng": self.generator.get_state(),
            "shape": (self.num_fields, self.max_dim),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if tuple(state["shape"]) != (self.num_fields, self.max_dim):
            raise ValueError(f"search state is for (F, D) = {tuple(state['shape'])}, this search has "
                             f"({self.num_fields}, {self.max_dim})")
        self.generation = int(state["generation"])
        self.population = [c.clone() for c in state["population"]]
        self.best = None if state["best"] is None else state["best"].clone()
        self.best_fitness = float(state["best_fitness"])
        self.history = copy.deepcopy(list(state["history"]))
        self.cache = dict(state["cache"])
        self.evaluations = int(state["evaluations"])
        self.generator.set_state(state["rng"])


__all__ = ["EvolutionSearch", "crossover", "crossover_point", "mutate", "random_candidate"]
