"""The token-match view: which candidate Meta Token each query Meta Token matches under MaxSim,
and what it contributes to the score (a plotly heatmap, r_q rows x r_c columns)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from metaembed.budget import Budget
from metaembed.scoring import token_matches


@dataclass(frozen=True)
class TokenView:
    """Similarity matrix and each row's MaxSim match for one query / candidate pair at one budget."""

    budget: Budget
    similarity: list[list[float]]  # (r_q, r_c)
    best: list[int]  # (r_q,) column of each row's max
    contributions: list[float]  # (r_q,) = similarity[i][best[i]]
    score: float

    def to_dict(self) -> dict:
        return {"budget": str(self.budget), "similarity": self.similarity, "best": self.best,
                "contributions": self.contributions, "score": self.score}


def token_view(query: torch.Tensor, candidate: torch.Tensor, budget: Budget) -> TokenView:
    """Wrap :func:`metaembed.scoring.token_matches` (the same maths as search) into plain lists."""
    match = token_matches(query, candidate, budget)
    return TokenView(
        budget=budget,
        similarity=[[float(v) for v in row] for row in match.similarity.float()],
        best=[int(j) for j in match.best],
        contributions=[float(c) for c in match.contributions],
        score=float(match.score),
    )


def match_shares(best: list[int]) -> list[tuple[int, int, float]]:
    """``(candidate token, rows it wins, share of the rows)`` for every candidate token some query row matched,
    most wins first: how the score is spread over the candidate's vectors."""
    counts = Counter(best)
    return [(j, n, n / len(best)) for j, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def heatmap_figure(view: TokenView, title: str = "") -> go.Figure:
    """Heatmap with each row's MaxSim match circled; row labels carry the contribution to the score."""
    r_q, r_c = len(view.similarity), len(view.similarity[0])
    x = [f"c{j + 1}" for j in range(r_c)]
    y = [f"q{i + 1}  +{view.contributions[i]:.3f}" for i in range(r_q)]
    fig = go.Figure(go.Heatmap(z=view.similarity, x=x, y=y, colorscale="Viridis",
                               colorbar={"title": {"text": "cos"}},
                               hovertemplate="query token %{y}<br>candidate token %{x}<br>sim %{z:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[x[j] for j in view.best], y=y, mode="markers", name="MaxSim match",
                             marker={"symbol": "circle-open", "size": 14, "color": "red", "line": {"width": 2}},
                             hovertemplate="%{y} matches %{x}<extra></extra>"))
    fig.update_layout(title_font_size=14, title=title or f"Meta-Token matches at {view.budget}: score {view.score:.3f} "
                                     f"= sum of row contributions",
                      yaxis={"autorange": "reversed", "title": "query Meta Token (+ contribution)"},
                      xaxis={"title": "candidate Meta Token"}, height=max(320, 60 + 26 * r_q),
                      margin={"l": 10, "r": 10, "t": 50, "b": 10}, showlegend=False)
    return fig
