//! What a roll will do, from the pool as listed: a pure function, shared by `--dry-run` and the roll.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;
use serde::Serialize;

use super::*;
use crate::status::BUNDLE_VERSION;

/// One old node in a roll plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replacement {
    pub node: String,
    /// Where an earlier, interrupted roll to the same bundle left it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// In place: its boot ID before the drain, as an interrupted roll recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// What a roll will do, from the pool as listed: pure, so `--dry-run` and the roll agree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollPlan {
    pub selector: String,
    pub target: String,
    /// Nodes are reprovisioned under their own names, not replaced.
    pub in_place: bool,
    /// Nodes already on the target bundle.
    pub at_target: Vec<String>,
    /// Old nodes in order: interrupted ones first, then by name.
    pub replace: Vec<Replacement>,
    /// (replacement, old) pairs whose old node is gone but was never decommissioned.
    pub decommission: Vec<(String, String)>,
}

/// The plan for a roll of `pool` to `target`, surge or `in_place`. Refused when a node is in the
/// middle of a roll of the other kind: the two modes take turns, they do not mix on one pool.
pub fn plan_roll(pool: &[Node], selector: &str, target: &str, in_place: bool) -> anyhow::Result<RollPlan> {
    let names: BTreeSet<String> = pool.iter().map(name).collect();
    let mut plan = RollPlan {
        selector: selector.to_string(),
        target: target.to_string(),
        in_place,
        ..Default::default()
    };
    let (mode, other) = if in_place {
        ("in-place", "without --in-place")
    } else {
        ("surge", "with --in-place")
    };
    for n in pool {
        let ann = annotations(n);
        let labels = n.metadata.labels.clone().unwrap_or_default();
        if let Some(old) = ann.get(REPLACES) {
            if !names.contains(old) {
                if in_place {
                    anyhow::bail!(
                        "node {} replaced {old} in an interrupted surge roll and {old} was never decommissioned: finish that roll first (run it again without --in-place)",
                        name(n)
                    );
                }
                plan.decommission.push((name(n), old.clone()));
            }
        }
        let same_roll = ann.get(ROLL_TARGET).map(String::as_str) == Some(target);
        let phase = same_roll
            .then(|| ann.get(ROLL_PHASE).and_then(|p| Phase::parse(p)))
            .flatten();
        if let Some(p) = phase.filter(|p| *p != Phase::Halted && p.in_place() != in_place) {
            anyhow::bail!(
                "node {} is in the middle of a roll of the other kind to bundle {target} ({ROLL_PHASE}={}); a {mode} roll cannot take it over: run the roll again {other}",
                name(n),
                p.as_str()
            );
        }
        // A node rolled in place reaches the target before the roll is done with it (it is still
        // cordoned), and one that halted there never proved a new boot: both are rolled again.
        let rolled_in_place = in_place && phase.is_some();
        if labels.get(BUNDLE_VERSION).map(String::as_str) == Some(target) && !rolled_in_place {
            plan.at_target.push(name(n));
            continue;
        }
        let resume = phase.filter(|p| *p != Phase::Halted);
        plan.replace.push(Replacement {
            node: name(n),
            resume,
            replacement: resume.and_then(|_| ann.get(ROLL_REPLACEMENT).cloned()),
            started: resume.and_then(|_| ann.get(ROLL_STARTED).cloned()),
            boot_id: resume.and_then(|_| ann.get(ROLL_BOOT_ID).cloned()),
        });
    }
    plan.replace
        .sort_by(|a, b| (a.resume.is_none(), &a.node).cmp(&(b.resume.is_none(), &b.node)));
    Ok(plan)
}

impl RollPlan {
    /// The plan as people read it (`--dry-run`).
    pub fn render(&self, a: &RollArgs) -> String {
        let mut s = format!(
            "roll {} to bundle {}{}: {} node(s) to {}, {} already on it; max surge {}, max unavailable {}, ready timeout {:?}\n",
            self.selector,
            self.target,
            if self.in_place { " in place" } else { "" },
            self.replace.len(),
            if self.in_place { "reprovision" } else { "replace" },
            self.at_target.len(),
            a.max_surge,
            a.max_unavailable,
            a.ready_timeout
        );
        if a.canary > 0 {
            let first: Vec<&str> = self.replace.iter().take(a.canary).map(|r| r.node.as_str()).collect();
            s.push_str(&format!(
                "  canary: {} first, soaked for {:?}{}, then the rest\n",
                if first.is_empty() {
                    "none left".to_string()
                } else {
                    first.join(", ")
                },
                a.soak,
                if a.soak_check.is_some() { " and checked" } else { "" }
            ));
        }
        for (new, old) in &self.decommission {
            s.push_str(&format!(
                "  decommission {old} (replaced by {new}; interrupted before)\n"
            ));
        }
        for r in &self.replace {
            let how = match (r.resume, self.in_place) {
                (None, false) => "provision a replacement, wait until Ready, drain, delete, decommission".to_string(),
                (None, true) => format!(
                    "cordon, drain, reprovision, wait until it is Ready on bundle {} after a new boot, uncordon",
                    self.target
                ),
                (Some(p), _) => format!("resume from {}", p.as_str()),
            };
            s.push_str(&format!("  {}: {how}\n", r.node));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::Node;

    use super::*;
    use crate::status::BUNDLE_VERSION;

    fn node(name: &str, bundle: Option<&str>, ann: &[(&str, &str)]) -> Node {
        let mut labels = BTreeMap::new();
        if let Some(b) = bundle {
            labels.insert(BUNDLE_VERSION.to_string(), b.to_string());
        }
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(labels);
        n.metadata.annotations = Some(ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        n
    }

    #[test]
    fn plan_orders_interrupted_nodes_first_and_skips_the_target() {
        let pool = vec![
            node("a", Some("1.0"), &[]),
            node("b", Some("2.0"), &[]),
            node(
                "c",
                Some("1.0"),
                &[(ROLL_TARGET, "2.0"), (ROLL_PHASE, "draining"), (ROLL_REPLACEMENT, "b")],
            ),
            node("d", None, &[(ROLL_TARGET, "3.0"), (ROLL_PHASE, "provisioned")]),
            node("e", Some("1.0"), &[(ROLL_TARGET, "2.0"), (ROLL_PHASE, "halted")]),
            node("f", Some("2.0"), &[(REPLACES, "gone")]),
        ];
        let p = plan_roll(&pool, "pool=x", "2.0", false).unwrap();
        assert_eq!(p.at_target, ["b", "f"]);
        let order: Vec<(&str, Option<Phase>)> = p.replace.iter().map(|r| (r.node.as_str(), r.resume)).collect();
        assert_eq!(
            order,
            [("c", Some(Phase::Draining)), ("a", None), ("d", None), ("e", None)]
        );
        assert_eq!(p.replace[0].replacement.as_deref(), Some("b"));
        assert_eq!(p.decommission, [("f".to_string(), "gone".to_string())]);
    }

    #[test]
    fn in_place_resumes_a_node_already_on_the_target_and_refuses_the_other_mode() {
        let pool = vec![
            node("a", Some("1.0"), &[]),
            node(
                "b",
                Some("2.0"),
                &[
                    (ROLL_TARGET, "2.0"),
                    (ROLL_PHASE, "reprovisioned"),
                    (ROLL_BOOT_ID, "boot-1"),
                ],
            ),
            node("c", Some("2.0"), &[(ROLL_TARGET, "2.0"), (ROLL_PHASE, "halted")]),
            node("d", Some("2.0"), &[]),
        ];
        let p = plan_roll(&pool, "pool=x", "2.0", true).unwrap();
        assert_eq!(p.at_target, ["d"]);
        let order: Vec<(&str, Option<Phase>)> = p.replace.iter().map(|r| (r.node.as_str(), r.resume)).collect();
        assert_eq!(order, [("b", Some(Phase::Reprovisioned)), ("a", None), ("c", None)]);
        assert_eq!(p.replace[0].boot_id.as_deref(), Some("boot-1"));
        let e = plan_roll(&pool, "pool=x", "2.0", false).unwrap_err().to_string();
        assert!(e.contains("node b is in the middle of a roll of the other kind"), "{e}");
        assert!(e.contains("run the roll again with --in-place"), "{e}");

        let surge = vec![node(
            "a",
            Some("1.0"),
            &[(ROLL_TARGET, "2.0"), (ROLL_PHASE, "provisioned")],
        )];
        let e = plan_roll(&surge, "pool=x", "2.0", true).unwrap_err().to_string();
        assert!(e.contains("run the roll again without --in-place"), "{e}");
        let left = vec![node("n", Some("2.0"), &[(REPLACES, "gone")])];
        let e = plan_roll(&left, "pool=x", "2.0", true).unwrap_err().to_string();
        assert!(e.contains("gone was never decommissioned"), "{e}");
    }
}
