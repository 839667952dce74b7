//! Prints deploy/crds.yaml: Weft's CustomResourceDefinitions, generated
//! from the model's own types.
fn main() {
    print!("{}", weft_datastore::kubernetes::crd::manifests());
}
