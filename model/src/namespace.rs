//! Kubernetes `v1 Namespace`, as far as policy reads it: a name and
//! labels, in the API server's shape.

use serde::{Deserialize, Serialize};

use crate::manifest::{FieldError, ObjectMeta};
use crate::selector::Labels;

pub const API_VERSION: &str = "v1";
pub const KIND: &str = "Namespace";
/// The label the API server puts on every namespace, holding its name:
/// what `namespaceSelector` picks a namespace by name with.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
}

fn api_version() -> String {
    API_VERSION.into()
}

fn kind() -> String {
    KIND.into()
}

impl Namespace {
    pub fn new(name: &str, labels: Labels) -> Namespace {
        Namespace {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta {
                name: name.into(),
                labels,
                ..ObjectMeta::default()
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The labels selectors see: the object's, with [`NAME_LABEL`] set to
    /// the name whatever the object says (the API server enforces it).
    pub fn labels(&self) -> Labels {
        labels_of(self.name(), Some(&self.metadata.labels))
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        self.metadata.validate_cluster_scoped()
    }
}

/// The labels of namespace `name`: `labels` (`None` for a namespace that
/// exists only through its pods) plus [`NAME_LABEL`].
pub fn labels_of(name: &str, labels: Option<&Labels>) -> Labels {
    let mut out = labels.cloned().unwrap_or_default();
    out.insert(NAME_LABEL.into(), name.into());
    out
}
