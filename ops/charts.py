"""The liquidation map as a PNG chart (matplotlib, headless): one panel per market.

Horizontal bars: the open notional whose liquidation price falls in each
price band, longs (liquidated when the price falls) and shorts (when it
rises) in two colours, and the last mark as a line.
"""

from fractions import Fraction
from pathlib import Path


class ChartsUnavailable(Exception):
    """matplotlib is not installed."""


def liquidation_map_figure(rows: list[dict]):
    """The figure for the rows of projections.analytics.LiquidationMap (decimal strings)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChartsUnavailable("the chart needs matplotlib: pip install -e '.[analytics]'") from None
    markets = sorted({row["market"] for row in rows})
    figure, axes = plt.subplots(1, max(1, len(markets)), figsize=(6 * max(1, len(markets)), 7), squeeze=False)
    for ax, market in zip(axes[0], markets):
        mine = [row for row in rows if row["market"] == market]
        for side, colour in (("long", "tab:red"), ("short", "tab:blue")):
            bars = [row for row in mine if row["side"] == side]
            low = [float(Fraction(row["band_low"])) for row in bars]  # display only
            height = [float(Fraction(row["band_high"]) - Fraction(row["band_low"])) for row in bars]
            ax.barh(low, [float(Fraction(row["notional"])) for row in bars], height=height, align="edge",
                    color=colour, alpha=0.75, label=f"{side}s (liquidated as price {'falls' if side == 'long' else 'rises'})")
        mark = float(Fraction(mine[0]["mark_price"]))
        ax.axhline(mark, color="black", linewidth=1, linestyle="--", label=f"last mark {mine[0]['mark_price']}")
        ax.set_title(f"Liquidation map: {market}")
        ax.set_xlabel("open notional at the mark")
        ax.set_ylabel("liquidation price")
        ax.legend(loc="best", fontsize=8)
        ax.grid(True, alpha=0.3)
    if not markets:
        axes[0][0].set_title("Liquidation map: no open position with a liquidation price")
    figure.tight_layout()
    return figure


def write_liquidation_map(rows: list[dict], path: Path) -> Path:
    figure = liquidation_map_figure(rows)
    figure.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path
