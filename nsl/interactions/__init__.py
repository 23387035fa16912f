"""Interactions: exact Harsanyi dividends of small games, pairwise interaction indices, and an audit of cheap
attribution scores against the exact decomposition.

    from nsl.interactions import SubGame, harsanyi, pairwise_interactions, audit
    sub = SubGame(game, culprits)              # the top-k filters, every other filter on
    dividends = harsanyi(sub)                  # all 2^k dividends, bitmask-indexed
    pairs = pairwise_interactions(sub)         # k x k Shapley interaction index
    fig = pairs.plot()                         # heatmap (matplotlib Figure)
    print(audit(dividends).to_markdown())      # LOO, grad x activation, IG, Shapley vs the principles
"""

from nsl.interactions.audit import (
    AUDIT_METHODS,
    AttributionAudit,
    AuditMethod,
    AuditRow,
    allocation_matrix,
    attribute,
    audit,
    gradient_x_input,
    integrated_gradients_from_dividends,
    multilinear_extension,
    occlusion1,
    render_markdown,
)
from nsl.interactions.harsanyi import (
    MAX_PLAYERS,
    NotAGameError,
    banzhaf_from_dividends,
    coalition_sizes,
    harsanyi,
    interaction_index,
    inverse_mobius,
    largest_dividends,
    mobius,
    order_profile,
    pairwise_from_dividends,
    shapley_from_dividends,
    superset_sums,
)
from nsl.interactions.indices import MAX_EXACT_PAIRWISE, PairwiseInteractions, pairwise_interactions
from nsl.interactions.plot import plot_interactions
from nsl.interactions.subgame import SubGame

__all__ = [
    "AUDIT_METHODS",
    "MAX_EXACT_PAIRWISE",
    "MAX_PLAYERS",
    "AttributionAudit",
    "AuditMethod",
    "AuditRow",
    "NotAGameError",
    "PairwiseInteractions",
    "SubGame",
    "allocation_matrix",
    "attribute",
    "audit",
    "banzhaf_from_dividends",
    "coalition_sizes",
    "gradient_x_input",
    "harsanyi",
    "integrated_gradients_from_dividends",
    "interaction_index",
    "inverse_mobius",
    "largest_dividends",
    "mobius",
    "multilinear_extension",
    "occlusion1",
    "order_profile",
    "pairwise_from_dividends",
    "pairwise_interactions",
    "plot_interactions",
    "render_markdown",
    "shapley_from_dividends",
    "superset_sums",
]
