//! Kubernetes label selectors (`metav1.LabelSelector`): what NetworkPolicy
//! uses to pick pods and namespaces, with upstream's matching rules and
//! its validation of keys, values and operators.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::FieldError;

/// Labels of a pod or a namespace.
pub type Labels = BTreeMap<String, String>;

/// `matchLabels` and `matchExpressions`, ANDed; an empty selector selects
/// everything (upstream's `{}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A requirement's operator. Kept as text when unknown so validation can
/// name the field instead of failing the parse without a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// Refused by validation; matches nothing if it ever gets further.
    Unknown(String),
}

impl From<String> for Operator {
    fn from(s: String) -> Operator {
        match s.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            _ => Operator::Unknown(s),
        }
    }
}

impl From<Operator> for String {
    fn from(op: Operator) -> String {
        match op {
            Operator::In => "In".into(),
            Operator::NotIn => "NotIn".into(),
            Operator::Exists => "Exists".into(),
            Operator::DoesNotExist => "DoesNotExist".into(),
            Operator::Unknown(s) => s,
        }
    }
}

impl LabelSelector {
    /// Whether `labels` satisfy every requirement (upstream's semantics:
    /// `NotIn` also holds when the key is absent).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Checks keys, values and operators as the API server does; `path`
    /// is the selector's own field path.
    pub fn validate(&self, path: &str) -> Result<(), FieldError> {
        for (k, v) in &self.match_labels {
            let at = format!("{path}.matchLabels");
            check_label_key(k, &at)?;
            check_label_value(v, &format!("{at}.{k}"))?;
        }
        for (i, r) in self.match_expressions.iter().enumerate() {
            let at = format!("{path}.matchExpressions[{i}]");
            check_label_key(&r.key, &format!("{at}.key"))?;
            match &r.operator {
                Operator::In | Operator::NotIn if r.values.is_empty() => {
                    return Err(FieldError::new(
                        format!("{at}.values"),
                        "",
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !r.values.is_empty() => {
                    return Err(FieldError::new(
                        format!("{at}.values"),
                        r.values.join(","),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
                Operator::Unknown(op) => {
                    return Err(FieldError::new(
                        format!("{at}.operator"),
                        op,
                        "not a valid selector operator (In, NotIn, Exists, DoesNotExist)",
                    ));
                }
                _ => {}
            }
            for (j, v) in r.values.iter().enumerate() {
                check_label_value(v, &format!("{at}.values[{j}]"))?;
            }
        }
        Ok(())
    }
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Unknown(_) => false,
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of
/// at most 63 characters (upstream's qualified name).
pub fn check_label_key(key: &str, path: &str) -> Result<(), FieldError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(crate::bgp_peer::is_dns_subdomain);
    if prefix_ok && !name.is_empty() && is_label_text(name) {
        return Ok(());
    }
    Err(FieldError::new(
        path,
        key,
        "must be a qualified name: an optional DNS subdomain prefix and '/', then at most 63 \
         alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
    ))
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_`, `.`,
/// starting and ending with an alphanumeric.
pub fn check_label_value(value: &str, path: &str) -> Result<(), FieldError> {
    if value.is_empty() || is_label_text(value) {
        return Ok(());
    }
    Err(FieldError::new(
        path,
        value,
        "must be a label value: at most 63 alphanumerics, '-', '_' or '.', starting and ending \
         with an alphanumeric",
    ))
}

fn is_label_text(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn empty_selects_everything_and_requirements_are_anded() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        assert!(LabelSelector::default().matches(&web));
        assert!(LabelSelector::default().matches(&Labels::new()));
        let sel = LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![req("tier", Operator::In, &["front", "edge"])],
        };
        assert!(sel.matches(&web));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "back")])));
        assert!(!sel.matches(&labels(&[("tier", "front")])));
    }

    #[test]
    fn operators_follow_upstream() {
        let web = labels(&[("app", "web")]);
        let none = Labels::new();
        let m = |r: Requirement, l: &Labels| {
            LabelSelector {
                match_expressions: vec![r],
                ..Default::default()
            }
            .matches(l)
        };
        assert!(m(req("app", Operator::In, &["web", "db"]), &web));
        assert!(!m(req("app", Operator::In, &["db"]), &web));
        assert!(!m(req("app", Operator::In, &["web"]), &none));
        assert!(!m(req("app", Operator::NotIn, &["web"]), &web));
        assert!(m(req("app", Operator::NotIn, &["db"]), &web));
        // NotIn holds when the key is absent.
        assert!(m(req("app", Operator::NotIn, &["web"]), &none));
        assert!(m(req("app", Operator::Exists, &[]), &web));
        assert!(!m(req("app", Operator::Exists, &[]), &none));
        assert!(!m(req("app", Operator::DoesNotExist, &[]), &web));
        assert!(m(req("app", Operator::DoesNotExist, &[]), &none));
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let err = |sel: LabelSelector| sel.validate("spec.podSelector").unwrap_err().path;
        let one = |r: Requirement| LabelSelector {
            match_expressions: vec![r],
            ..Default::default()
        };
        assert_eq!(
            err(one(req("app", Operator::Unknown("Is".into()), &["x"]))),
            "spec.podSelector.matchExpressions[0].operator"
        );
        assert_eq!(
            err(one(req("app", Operator::In, &[]))),
            "spec.podSelector.matchExpressions[0].values"
        );
        assert_eq!(
            err(one(req("app", Operator::Exists, &["x"]))),
            "spec.podSelector.matchExpressions[0].values"
        );
        assert_eq!(
            err(one(req("app", Operator::In, &["bad value"]))),
            "spec.podSelector.matchExpressions[0].values[0]"
        );
        assert_eq!(
            err(one(req("-app", Operator::Exists, &[]))),
            "spec.podSelector.matchExpressions[0].key"
        );
        let bad_value = LabelSelector {
            match_labels: labels(&[("app", "a b")]),
            ..Default::default()
        };
        assert_eq!(err(bad_value), "spec.podSelector.matchLabels.app");
        let prefixed = LabelSelector {
            match_labels: labels(&[("kubernetes.io/metadata.name", "x"), ("k", "")]),
            ..Default::default()
        };
        assert!(prefixed.validate("s").is_ok());
    }
}
