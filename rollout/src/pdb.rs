//! Whether a PodDisruptionBudget can ever allow an eviction, by the disruption controller's own
//! arithmetic: it allows one when more pods are healthy than it requires. The most pods that can
//! ever be healthy (without an eviction making room for a new one) are the covered pods that are
//! not terminating, or the controller's scale (`expectedPods`) when that is more, since a
//! controller recreates a pod that was just deleted. If that is not above the budget's desired
//! healthy count, and no covered pod is terminating (its replacement could add one), waiting
//! cannot help: the drain reports the budget
//! at once instead of retrying until its timeout. Pods that are not Ready yet count as possibly
//! healthy, so a budget waiting for them is "waiting", not hopeless. Pure functions, no API calls.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A label selector as the API server evaluates it: `matchLabels` and `matchExpressions`
/// (`In`, `NotIn`, `Exists`, `DoesNotExist`). An empty selector matches every pod.
pub fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// The pods of `pods` that `pdb` covers (a budget without a selector covers none).
pub fn covered<'a>(pdb: &PodDisruptionBudget, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let Some(sel) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return Vec::new();
    };
    pods.iter()
        .filter(|p| selects(sel, p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
        .collect()
}

fn scaled(v: &IntOrString, total: i32) -> i32 {
    match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let pct: i32 = s.trim_end_matches('%').parse().unwrap_or(100);
            // The disruption controller rounds up.
            ((i64::from(pct) * i64::from(total) + 99) / 100) as i32
        }
    }
}

/// How many healthy pods `pdb` requires, given `expected` pods: from its spec, as the disruption
/// controller computes `desiredHealthy`.
pub fn desired_healthy(pdb: &PodDisruptionBudget, expected: i32) -> i32 {
    let spec = pdb.spec.as_ref();
    match (
        spec.and_then(|s| s.min_available.as_ref()),
        spec.and_then(|s| s.max_unavailable.as_ref()),
    ) {
        (Some(min), _) => scaled(min, expected),
        (None, Some(max)) => expected - scaled(max, expected),
        (None, None) => 0,
    }
}

/// What waiting on `pdb` can bring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It allows a disruption now.
    Allows,
    /// It may allow one later: `healthy` of `possible` pods are healthy, it needs more than
    /// `desired`.
    Waiting { healthy: i32, possible: i32, desired: i32 },
    /// It never will: at most `possible` pods can be healthy and it requires `desired`.
    Never { possible: i32, desired: i32 },
}

/// The verdict on `pdb` over the pods it covers (`covered`), by the disruption controller's
/// arithmetic; `expected` comes from its status when the controller has computed it.
pub fn verdict(pdb: &PodDisruptionBudget, covered: &[&Pod]) -> Verdict {
    let status = pdb.status.as_ref();
    if status.and_then(|s| s.disruptions_allowed).unwrap_or(0) > 0 {
        return Verdict::Allows;
    }
    let terminating = covered.iter().any(|p| p.metadata.deletion_timestamp.is_some());
    let present = covered
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count() as i32;
    let expected = status
        .and_then(|s| s.expected_pods)
        .filter(|e| *e > 0)
        .unwrap_or(covered.len() as i32);
    // A controller brings its pods back to its scale (the controller's `expectedPods`): a pod
    // just deleted and not yet recreated still counts.
    let possible = present.max(expected);
    let desired = desired_healthy(pdb, expected);
    let healthy = status.and_then(|s| s.current_healthy).unwrap_or(0);
    if possible <= desired && !terminating {
        Verdict::Never { possible, desired }
    } else {
        Verdict::Waiting {
            healthy,
            possible,
            desired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    fn pod(app: &str, terminating: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        if terminating {
            p.metadata.deletion_timestamp = Some(Time(Default::default()));
        }
        p
    }

    fn pdb(min: Option<IntOrString>, max: Option<IntOrString>, allowed: i32, healthy: i32) -> PodDisruptionBudget {
        PodDisruptionBudget {
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                disruptions_allowed: Some(allowed),
                current_healthy: Some(healthy),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pods_not_ready_yet_make_a_budget_wait_not_hopeless() {
        // minAvailable 1 over two pods that are not Ready yet: they can become Ready.
        let pods = [pod("web", false), pod("web", false)];
        let b = pdb(Some(IntOrString::Int(1)), None, 0, 0);
        let c = covered(&b, &pods);
        assert_eq!(
            verdict(&b, &c),
            Verdict::Waiting {
                healthy: 0,
                possible: 2,
                desired: 1
            }
        );
    }

    #[test]
    fn a_budget_that_can_never_allow_is_hopeless() {
        let pods = [pod("web", false)];
        let b = pdb(Some(IntOrString::Int(1)), None, 0, 1);
        assert_eq!(
            verdict(&b, &covered(&b, &pods)),
            Verdict::Never {
                possible: 1,
                desired: 1
            }
        );
        // maxUnavailable 0 never allows a disruption, however many pods there are.
        let pods = [pod("web", false), pod("web", false), pod("web", false)];
        let b = pdb(None, Some(IntOrString::Int(0)), 0, 3);
        assert_eq!(
            verdict(&b, &covered(&b, &pods)),
            Verdict::Never {
                possible: 3,
                desired: 3
            }
        );
        // A percentage rounds up, as the disruption controller does: 50% of 3 is 2.
        let b = pdb(Some(IntOrString::String("50%".into())), None, 0, 1);
        assert_eq!(desired_healthy(&b, 3), 2);
        // A terminating pod's replacement may come up elsewhere: waiting.
        let pods = [pod("web", false), pod("web", true)];
        let b = pdb(Some(IntOrString::Int(1)), None, 0, 1);
        assert!(matches!(verdict(&b, &covered(&b, &pods)), Verdict::Waiting { .. }));
        // A pod just deleted and not yet recreated by its controller (scale 5, 4 present):
        // maxUnavailable 1 waits for the replacement.
        let mut b = pdb(None, Some(IntOrString::Int(1)), 0, 3);
        b.status.as_mut().unwrap().expected_pods = Some(5);
        let four = [
            pod("web", false),
            pod("web", false),
            pod("web", false),
            pod("web", false),
        ];
        assert!(matches!(
            verdict(&b, &covered(&b, &four)),
            Verdict::Waiting {
                possible: 5,
                desired: 4,
                ..
            }
        ));
        // Allowed now.
        let b = pdb(Some(IntOrString::Int(1)), None, 1, 2);
        assert_eq!(verdict(&b, &covered(&b, &pods)), Verdict::Allows);
    }

    #[test]
    fn selectors_with_expressions_and_budgets_without_selectors() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let req = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        };
        assert!(selects(&req("In", &["web", "api"]), &labels));
        assert!(!selects(&req("NotIn", &["web"]), &labels));
        assert!(selects(&req("Exists", &[]), &labels));
        assert!(!selects(&req("DoesNotExist", &[]), &labels));
        assert!(selects(&LabelSelector::default(), &labels), "empty selects all");
        let mut no_selector = pdb(Some(IntOrString::Int(1)), None, 0, 0);
        no_selector.spec.as_mut().unwrap().selector = None;
        assert!(covered(&no_selector, &[pod("web", false)]).is_empty());
    }
}
