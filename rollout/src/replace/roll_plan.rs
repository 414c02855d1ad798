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
}

/// What a roll will do, from the pool as listed: pure, so `--dry-run` and the roll agree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollPlan {
    pub selector: String,
    pub target: String,
    /// Nodes already on the target bundle.
    pub at_target: Vec<String>,
    /// Old nodes in order: interrupted ones first, then by name.
    pub replace: Vec<Replacement>,
    /// (replacement, old) pairs whose old node is gone but was never decommissioned.
    pub decommission: Vec<(String, String)>,
}

pub fn plan_roll(pool: &[Node], selector: &str, target: &str) -> RollPlan {
    let names: BTreeSet<String> = pool.iter().map(name).collect();
    let mut plan = RollPlan {
        selector: selector.to_string(),
        target: target.to_string(),
        ..Default::default()
    };
    for n in pool {
        let ann = annotations(n);
        let labels = n.metadata.labels.clone().unwrap_or_default();
        if let Some(old) = ann.get(REPLACES) {
            if !names.contains(old) {
                plan.decommission.push((name(n), old.clone()));
            }
        }
        if labels.get(BUNDLE_VERSION).map(String::as_str) == Some(target) {
            plan.at_target.push(name(n));
            continue;
        }
        let same_roll = ann.get(ROLL_TARGET).map(String::as_str) == Some(target);
        let resume = same_roll
            .then(|| ann.get(ROLL_PHASE).and_then(|p| Phase::parse(p)))
            .flatten()
            .filter(|p| *p != Phase::Halted);
        plan.replace.push(Replacement {
            node: name(n),
            resume,
            replacement: resume.and_then(|_| ann.get(ROLL_REPLACEMENT).cloned()),
            started: resume.and_then(|_| ann.get(ROLL_STARTED).cloned()),
        });
    }
    plan.replace
        .sort_by(|a, b| (a.resume.is_none(), &a.node).cmp(&(b.resume.is_none(), &b.node)));
    plan
}

impl RollPlan {
    /// The plan as people read it (`--dry-run`).
    pub fn render(&self, a: &RollArgs) -> String {
        let mut s = format!(
            "roll {} to bundle {}: {} node(s) to replace, {} already on it; max surge {}, max unavailable {}, ready timeout {:?}\n",
            self.selector,
            self.target,
            self.replace.len(),
            self.at_target.len(),
            a.max_surge,
            a.max_unavailable,
            a.ready_timeout
        );
        for (new, old) in &self.decommission {
            s.push_str(&format!(
                "  decommission {old} (replaced by {new}; interrupted before)\n"
            ));
        }
        for r in &self.replace {
            let how = match r.resume {
                None => "provision a replacement, wait until Ready, drain, delete, decommission".to_string(),
                Some(p) => format!("resume from {}", p.as_str()),
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
        let p = plan_roll(&pool, "pool=x", "2.0");
        assert_eq!(p.at_target, ["b", "f"]);
        let order: Vec<(&str, Option<Phase>)> = p.replace.iter().map(|r| (r.node.as_str(), r.resume)).collect();
        assert_eq!(
            order,
            [("c", Some(Phase::Draining)), ("a", None), ("d", None), ("e", None)]
        );
        assert_eq!(p.replace[0].replacement.as_deref(), Some("b"));
        assert_eq!(p.decommission, [("f".to_string(), "gone".to_string())]);
    }
}
