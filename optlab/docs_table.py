"""The catalogue as a markdown table (for the README, docs and `optlab catalog`)."""

from __future__ import annotations

from optlab.catalog import catalog

BEGIN, END = "<!-- catalog:begin -->", "<!-- catalog:end -->"


def catalog_table() -> str:
  rows = ["| recipe | family | paper | arXiv | extra args | optax equivalent |",
          "|---|---|---|---|---|---|"]
  for r in catalog():
    arxiv = f"[{r.arxiv}](https://arxiv.org/abs/{r.arxiv})" if r.arxiv else "-"
    extra = ", ".join(f"`{a}`" for a in r.needs_extra_args) or "-"
    rows.append(f"| `{r.name}` | {r.family} | {r.paper} | {arxiv} | {extra} | "
                f"{'yes' if r.optax else '-'} |")
  return "\n".join(rows)


def with_table(text: str) -> str:
  """`text` with the block between the catalog markers replaced by the current table."""
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  return f"{head}{BEGIN}\n{catalog_table()}\n{END}{tail}"
