//! The energy-flow chart (能流图) of one period's balance: where the enterprise's energy comes
//! from (purchases, stock drawn down, energy its process units recover), through each carrier
//! and the conversion units (power plant, oxygen plant), to the units that use it, exports,
//! flaring, stock built up and the remainder no meter saw. In tce on the basis asked for.
//!
//! Every link is one figure of the [`Balance`]: a carrier's purchase, stock change, export,
//! flare or remainder, or one unit's consumption or generation of a carrier (its meters summed),
//! so the chart adds nothing of its own. A Sankey chart needs a graph without cycles; a unit
//! that takes a carrier that its own output (directly or through other units) helped to make
//! would close one, so that link goes to a second node of the same unit, marked as such.

use serde::Serialize;

use crate::balance::{Balance, CarrierBalance, NodeFlow, OnBases};
use crate::coefficients::ElectricityBasis;
use crate::model::Function;

/// One period's chart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnergyFlow {
    pub start: String,
    pub end: String,
    pub basis: ElectricityBasis,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Node {
    /// Unique in the chart: `purchase:coal`, `carrier:coal`, `unit:bf1`, `recovered:bf1` ...,
    /// and `remainder` and `imbalance`, one each for every carrier.
    pub id: String,
    /// A unit's name, the carrier's code for a carrier's own nodes, empty for the remainder's
    /// and the imbalance's.
    pub name: String,
    pub kind: NodeKind,
    /// The carrier of a carrier's node (purchase, stock, export, flare).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Purchase,
    /// Stock drawn down (a source) or built up (a sink).
    StockDecrease,
    StockIncrease,
    /// A process unit's recovered energy (its waste heat, its off-gas).
    Recovered,
    Carrier,
    Unit(Function),
    /// A second node of a unit whose link would otherwise close a cycle.
    UnitAgain(Function),
    Export,
    Flare,
    /// Supply the meters of its users do not account for: losses and unmetered users.
    Remainder,
    /// Users metered beyond the supply (a negative remainder): the meters disagree.
    Imbalance,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Link {
    pub source: String,
    pub target: String,
    pub carrier: String,
    /// The balance's part this link draws.
    pub part: Part,
    pub tce: f64,
    /// The same in the carrier's own unit.
    pub quantity: f64,
    pub unit: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Purchase,
    StockChange,
    Generated,
    Consumed,
    Export,
    Flared,
    Remainder,
}

/// The chart of `balance` on `basis`. Parts of zero (or that would be drawn backwards, like a
/// negative purchase) are left out; a negative stock change is stock drawn down, a negative
/// remainder an imbalance feeding the carrier.
pub fn energy_flow(balance: &Balance, basis: ElectricityBasis) -> EnergyFlow {
    let mut chart = Chart::default();
    // Conversion output before anything is taken, so that a unit taking what it helped to make
    // is the link that moves to a second node.
    for c in &balance.carriers {
        chart.node(
            &format!("carrier:{}", c.carrier),
            &c.carrier,
            NodeKind::Carrier,
            None,
        );
        for (unit, q, kgce) in by_unit(&c.generated) {
            let n = unit_node(&mut chart, unit, true);
            chart.link(
                &n,
                &format!("carrier:{}", c.carrier),
                c,
                Part::Generated,
                q,
                kgce.on(basis),
            );
        }
    }
    for c in &balance.carriers {
        let carrier = format!("carrier:{}", c.carrier);
        let k = &c.kgce;
        let own = |kind: &str| format!("{kind}:{}", c.carrier);
        if c.purchase > 0.0 {
            chart.node(&own("purchase"), &c.carrier, NodeKind::Purchase, Some(c));
            chart.link(
                &own("purchase"),
                &carrier,
                c,
                Part::Purchase,
                c.purchase,
                k.purchase.on(basis),
            );
        }
        if c.stock_change < 0.0 {
            chart.node(&own("stock"), &c.carrier, NodeKind::StockDecrease, Some(c));
            chart.link(
                &own("stock"),
                &carrier,
                c,
                Part::StockChange,
                -c.stock_change,
                -k.stock_change.on(basis),
            );
        } else if c.stock_change > 0.0 {
            chart.node(&own("stock"), &c.carrier, NodeKind::StockIncrease, Some(c));
            chart.link(
                &carrier,
                &own("stock"),
                c,
                Part::StockChange,
                c.stock_change,
                k.stock_change.on(basis),
            );
        }
        for (unit, q, kgce) in by_unit(&c.consumed) {
            let n = unit_node(&mut chart, unit, false);
            chart.link(&carrier, &n, c, Part::Consumed, q, kgce.on(basis));
        }
        for (kind, part, q, kgce) in [
            (NodeKind::Export, Part::Export, c.export, k.export),
            (NodeKind::Flare, Part::Flared, c.flared, k.flared),
        ] {
            if q > 0.0 {
                let id = own(if kind == NodeKind::Export {
                    "export"
                } else {
                    "flare"
                });
                chart.node(&id, &c.carrier, kind, Some(c));
                chart.link(&carrier, &id, c, part, q, kgce.on(basis));
            }
        }
        // One node each for every carrier's remainder and imbalance: many are small.
        if c.remainder > 0.0 {
            chart.node("remainder", "", NodeKind::Remainder, None);
            chart.link(
                &carrier,
                "remainder",
                c,
                Part::Remainder,
                c.remainder,
                k.remainder.on(basis),
            );
        } else if c.remainder < 0.0 {
            chart.node("imbalance", "", NodeKind::Imbalance, None);
            chart.link(
                "imbalance",
                &carrier,
                c,
                Part::Remainder,
                -c.remainder,
                -k.remainder.on(basis),
            );
        }
    }
    EnergyFlow {
        start: balance.start.clone(),
        end: balance.end.clone(),
        basis,
        nodes: chart.nodes,
        links: chart.links,
    }
}

/// Each unit's part of a carrier, its meters summed, in the order first met. A unit's own use
/// behind its net meter is in its generation and its consumption alike: drawn in neither.
fn by_unit(flows: &[NodeFlow]) -> Vec<(&NodeFlow, f64, OnBases)> {
    let mut out: Vec<(&NodeFlow, f64, OnBases)> = Vec::new();
    for n in flows.iter().filter(|n| !n.own_use) {
        match out.iter_mut().find(|(u, _, _)| u.unit == n.unit) {
            Some((_, q, kgce)) => {
                *q += n.quantity;
                kgce.equivalent += n.kgce.equivalent;
                kgce.equal_value += n.kgce.equal_value;
            }
            None => out.push((n, n.quantity, n.kgce)),
        }
    }
    out
}

/// A unit's node: a process unit's recovered energy comes from a node of its own, so that a
/// furnace burning the gas it makes is not a loop; a conversion unit is one node, in and out.
fn unit_node(chart: &mut Chart, n: &NodeFlow, generates: bool) -> String {
    let (id, kind) = if generates && n.function != Function::Conversion {
        (format!("recovered:{}", n.unit), NodeKind::Recovered)
    } else {
        (format!("unit:{}", n.unit), NodeKind::Unit(n.function))
    };
    chart.node(&id, &n.name, kind, None);
    id
}

#[derive(Default)]
struct Chart {
    nodes: Vec<Node>,
    links: Vec<Link>,
}

impl Chart {
    fn node(&mut self, id: &str, name: &str, kind: NodeKind, of: Option<&CarrierBalance>) {
        if !self.nodes.iter().any(|n| n.id == id) {
            self.nodes.push(Node {
                id: id.to_owned(),
                name: name.to_owned(),
                kind,
                carrier: of.map(|c| c.carrier.clone()),
            });
        }
    }

    /// Adds a link of `kgce` (drawn in tce) unless it is empty; a link that would close a
    /// cycle goes to a second node of its target unit instead.
    fn link(
        &mut self,
        source: &str,
        target: &str,
        c: &CarrierBalance,
        part: Part,
        quantity: f64,
        kgce: f64,
    ) {
        // Nothing, or rounding's dust of a carrier that closes.
        if quantity <= 1e-9 * c.supply.abs().max(1.0) || !kgce.is_finite() {
            return;
        }
        let mut target = target.to_owned();
        if self.reaches(&target, source) {
            let again = self.nodes.iter().find(|n| n.id == target).cloned();
            if let Some(Node {
                name,
                kind: NodeKind::Unit(f),
                ..
            }) = again
            {
                target = format!("{target}:again");
                self.node(&target, &name, NodeKind::UnitAgain(f), None);
            }
        }
        self.links.push(Link {
            source: source.to_owned(),
            target,
            carrier: c.carrier.clone(),
            part,
            tce: kgce / 1000.0,
            quantity,
            unit: c.unit.clone(),
        });
    }

    /// Whether `to` can be reached from `from` along the links so far.
    fn reaches(&self, from: &str, to: &str) -> bool {
        let mut seen = vec![from];
        let mut next = vec![from];
        while let Some(at) = next.pop() {
            if at == to {
                return true;
            }
            for l in self.links.iter().filter(|l| l.source == at) {
                if !seen.contains(&l.target.as_str()) {
                    seen.push(&l.target);
                    next.push(&l.target);
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::balance::tests::{balance_of_day, day_balance};
    use crate::model::Plant;
    use ems_config::Source;

    fn link<'a>(f: &'a EnergyFlow, source: &str, target: &str) -> &'a Link {
        f.links
            .iter()
            .find(|l| l.source == source && l.target == target)
            .unwrap_or_else(|| panic!("no link {source} -> {target} in {:#?}", f.links))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    /// Whether the links can be ordered so that each goes forward (what a Sankey chart needs).
    fn acyclic(f: &EnergyFlow) -> bool {
        let mut left: Vec<&Link> = f.links.iter().collect();
        while !left.is_empty() {
            let before = left.len();
            let fed: Vec<&str> = left.iter().map(|l| l.target.as_str()).collect();
            left.retain(|l| fed.contains(&l.source.as_str()));
            if left.len() == before {
                return false;
            }
        }
        true
    }

    #[test]
    fn each_link_is_a_figure_of_the_balance_in_tce_on_the_basis_asked() {
        let b = day_balance("gross");
        for basis in [ElectricityBasis::Equivalent, ElectricityBasis::Equal] {
            let f = energy_flow(&b, basis);
            let c = |code: &str| b.carriers.iter().find(|c| c.carrier == code).unwrap();
            let e = c("electricity");
            // 1 000 000 kWh bought: 122.9 tce equivalent, 404 tce equal value.
            let bought = link(&f, "purchase:electricity", "carrier:electricity");
            assert!(close(bought.tce, e.kgce.purchase.on(basis) / 1000.0));
            assert!(
                close(bought.tce, [122.9, 404.0][basis.index()]),
                "{bought:?}"
            );
            assert_eq!(
                (bought.quantity, bought.unit.as_str()),
                (1_000_000.0, "kWh")
            );
            // The mill's 800 MWh, in the row's kWh.
            let mill = link(&f, "carrier:electricity", "unit:mill");
            assert_eq!(mill.quantity, 800_000.0);
            assert!(close(mill.tce, [98.32, 323.2][basis.index()]), "{mill:?}");
            // The power plant makes electricity out of the furnace's gas; the furnace's gas
            // comes from its own node, apart from what the furnace burns.
            assert_eq!(
                link(&f, "unit:cpp", "carrier:electricity").part,
                Part::Generated
            );
            assert_eq!(link(&f, "carrier:bfg", "unit:cpp").part, Part::Consumed);
            assert_eq!(
                link(&f, "recovered:bf", "carrier:bfg").quantity,
                1_000_000.0
            );
            assert_eq!(link(&f, "carrier:bfg", "unit:bf").quantity, 400_000.0);
            // Exports, flaring, stocks built up and the non-production canteen are all drawn.
            assert_eq!(
                link(&f, "carrier:electricity", "export:electricity").quantity,
                10_000.0
            );
            assert_eq!(link(&f, "carrier:bfg", "flare:bfg").quantity, 100_000.0);
            assert_eq!(link(&f, "carrier:coke", "stock:coke").quantity, 20.0);
            assert_eq!(
                link(&f, "carrier:electricity", "unit:canteen").quantity,
                20_000.0
            );
            assert!(acyclic(&f));
        }
    }

    #[test]
    fn every_carrier_node_closes_in_tce_with_its_remainder() {
        for generation in ["gross", "net"] {
            let b = day_balance(generation);
            let f = energy_flow(&b, ElectricityBasis::Equivalent);
            for c in &b.carriers {
                let id = format!("carrier:{}", c.carrier);
                let into: f64 = f
                    .links
                    .iter()
                    .filter(|l| l.target == id)
                    .map(|l| l.tce)
                    .sum();
                let out: f64 = f
                    .links
                    .iter()
                    .filter(|l| l.source == id)
                    .map(|l| l.tce)
                    .sum();
                assert!((into - out).abs() < 1e-9, "{id}: {into} in, {out} out");
                let drawn = f
                    .links
                    .iter()
                    .filter(|l| l.carrier == c.carrier && l.part == Part::Remainder)
                    .map(|l| l.tce)
                    .sum::<f64>();
                assert!(
                    close(drawn, c.kgce.remainder.equivalent.abs() / 1000.0),
                    "{id}"
                );
            }
        }
    }

    #[test]
    fn a_unit_taking_what_its_output_helped_make_goes_to_a_second_node() {
        // The power plant's auxiliaries take electricity from the works' grid, which its own
        // generation feeds: drawn straight, that is a loop.
        let text = "[[units]]\nid = \"cpp\"\nname = \"CPP\"\nkind = \"power_plant\"\nfunction = \"conversion\"\n\
            [[units.flows]]\ndevice = \"cpp-gas\"\npoint = \"total\"\nrole = \"consumed\"\ncarrier = \"natural_gas\"\nunit = \"m3\"\n\
            [[units.flows]]\ndevice = \"cpp-aux\"\npoint = \"total\"\nrole = \"consumed\"\ncarrier = \"electricity\"\nunit = \"kWh\"\n\
            [[units.flows]]\ndevice = \"cpp-gen\"\npoint = \"total\"\nrole = \"recovered\"\ncarrier = \"electricity\"\nunit = \"kWh\"\ngeneration = \"gross\"\n\
            [[units]]\nid = \"mill\"\nname = \"Mill\"\nkind = \"rolling_mill\"\n\
            [[units.flows]]\ndevice = \"billets\"\npoint = \"total\"\nrole = \"product\"\nunit = \"t\"\n\
            [[units.flows]]\ndevice = \"mill-power\"\npoint = \"total\"\nrole = \"consumed\"\ncarrier = \"electricity\"\nunit = \"kWh\"\n";
        let plant = Plant::from_tables(&Source::embedded("cpp.toml", text))
            .unwrap_or_else(|e| panic!("{e}"));
        let day = BTreeMap::from([
            ("cpp-gas", 40_000.0),
            ("cpp-aux", 12_000.0),
            ("cpp-gen", 150_000.0),
            ("billets", 900.0),
            ("mill-power", 130_000.0),
        ]);
        let f = energy_flow(&balance_of_day(&plant, &day), ElectricityBasis::Equivalent);
        assert!(acyclic(&f), "{:#?}", f.links);
        assert_eq!(
            link(&f, "carrier:electricity", "unit:cpp:again").quantity,
            12_000.0
        );
        let again = f.nodes.iter().find(|n| n.id == "unit:cpp:again").unwrap();
        assert_eq!(
            (again.name.as_str(), again.kind),
            ("CPP", NodeKind::UnitAgain(Function::Conversion))
        );
        // Metered users took 142 000 kWh of the 150 000 made: 8 000 kWh unaccounted.
        assert_eq!(
            link(&f, "carrier:electricity", "remainder").quantity,
            8_000.0
        );
    }
}
