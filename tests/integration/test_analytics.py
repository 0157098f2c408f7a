"""The bundled analytics projections against independent computations on a demo session."""

import csv
import json
from collections import defaultdict
from fractions import Fraction

import pytest

from ringfence.ops.charts import liquidation_map_figure
from tests.integration.test_projections import MODULES

ANALYTICS = "ringfence.projections.analytics"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo session with funding, liquidations, ADL and a matching engine's answers."""
    from tests.integration.conftest import ringfence

    data = tmp_path_factory.mktemp("analytics") / "demo"
    ringfence("demo", "--seed", "3", "--events", "200000", "--traders", "300", "--data", str(data), data=data)
    return data


def rows(cli, data, spec, env=None) -> list[dict]:
    return [json.loads(line) for line in cli("project", spec, "--json", data=data, env=env)[1].splitlines()]


def positions(cli, data) -> list[dict]:
    return [json.loads(line) for line in cli("positions", "--json", data=data)[1].splitlines()]


def floor_units(value: Fraction) -> Fraction:
    """Round down to 1e-8, as the projections do."""
    return Fraction(int(value * 10**8 // 1), 10**8)


def test_account_flows_explain_every_account_equity(demo, cli):
    flows = {(r["account"], r["asset"]): r for r in rows(cli, demo, f"{ANALYTICS}:AccountFlows")}
    deposits = {r["key"]: r["net"] for r in rows(cli, demo, "flaky:Deposits", env={"PYTHONPATH": MODULES})}
    equity: dict[tuple[str, str], Fraction] = defaultdict(Fraction)
    for wallet in json.loads("[" + ",".join(cli("wallets", "--json", data=demo)[1].splitlines()) + "]"):
        equity[(wallet["account"], wallet["asset"])] += Fraction(wallet["balance"])
    for position in positions(cli, demo):
        equity[(position["account"], "USDT")] += Fraction(position["isolated_margin"])
    assert any(Fraction(r["funding"]) for r in flows.values()) and any(Fraction(r["liquidations"]) for r in flows.values())
    for (account, asset), row in flows.items():  # equity = money in + realized - fees + funding + liquidation results
        money_in = Fraction(deposits.get(f"{account} {asset}", 0), 10**8)
        assert equity[(account, asset)] == money_in + Fraction(row["net"]), account


def test_exposure_is_the_notional_of_the_open_positions_with_correlated_warnings(demo, cli):
    expected: dict[str, dict] = defaultdict(lambda: {"long": Fraction(0), "short": Fraction(0), "markets": defaultdict(set)})
    for p in positions(cli, demo):
        notional = floor_units(abs(Fraction(p["size"])) * Fraction(p["mark_price"]))
        side = "long" if Fraction(p["size"]) > 0 else "short"
        expected[p["account"]][side] += notional
        expected[p["account"]]["markets"][side].add(p["market"])
    exposure = {r["account"]: r for r in rows(cli, demo, f"{ANALYTICS}:Exposure")}
    assert set(exposure) == set(expected)
    for account, row in exposure.items():
        assert (Fraction(row["long"]), Fraction(row["short"])) == (expected[account]["long"], expected[account]["short"])
        both = [side for side, markets in expected[account]["markets"].items() if {"BTCUSDT", "ETHUSDT"} <= markets]
        assert (row["warning"] is not None) == bool(both)
    assert any(row["warning"] for row in exposure.values())


def test_the_liquidation_map_holds_every_open_position_with_a_liquidation_price(demo, cli, tmp_path):
    out = tmp_path / "map"
    cli("liqmap", "--out", str(out), data=demo)
    with open(out / "liquidation-map.csv") as file:
        bands = list(csv.DictReader(file))
    assert bands == [{k: str(v) for k, v in row.items()} for row in rows(cli, demo, f"{ANALYTICS}:LiquidationMap")]
    totals: dict[tuple[str, str], list] = defaultdict(lambda: [0, Fraction(0)])
    for p in positions(cli, demo):
        if p["liquidation_price"] is not None:
            total = totals[(p["market"], "long" if Fraction(p["size"]) > 0 else "short")]
            total[0] += 1
            total[1] += floor_units(abs(Fraction(p["size"])) * Fraction(p["mark_price"]))
    mapped: dict[tuple[str, str], list] = defaultdict(lambda: [0, Fraction(0)])
    for band in bands:
        entry = mapped[(band["market"], band["side"])]
        entry[0] += int(band["positions"])
        entry[1] += Fraction(band["notional"])
        assert Fraction(band["band_low"]) < Fraction(band["band_high"])
    assert mapped == totals and len(bands) > 20

    from PIL import Image

    with Image.open(out / "liquidation-map.png") as image:  # a real image, not an empty canvas
        assert image.format == "PNG" and image.size == (1200, 700)
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 50
    figure = liquidation_map_figure([{k: v for k, v in row.items()} for row in bands])
    titles = [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in figure.axes]
    assert titles == [(f"Liquidation map: {m}", "open notional at the mark", "liquidation price")
                      for m in ("BTCUSDT", "ETHUSDT")]  # fmt: skip
    assert all(len(ax.patches) > 5 and ax.get_legend() is not None for ax in figure.axes)
