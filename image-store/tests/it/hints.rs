//! A manifest's hints are checked whenever it is loaded, not only at import: a `data_path`
//! edited into a stored manifest (or one signed by a careless maintainer) never reaches the agent.

use image_store::{ImageRef, ImportOptions, Store, StoreError};

#[test]
fn bad_data_path_in_a_stored_manifest_is_refused_at_load() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let src = d.path().join("a.img");
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    let r: ImageRef = "a@1".parse().unwrap();
    store
        .import(&r, &src, &ImportOptions::default(), None)
        .unwrap();
    let path = store.root().join("images/a/1.json");
    let good = std::fs::read_to_string(&path).unwrap();
    assert!(good.contains("\"data_path\": null") || good.contains("\"data_path\":null"));
    for bad in ["/Users/../../etc", "Users", "/a//b", "/a\\u0000b"] {
        let text = good
            .replace("\"data_path\": null", &format!("\"data_path\": \"{bad}\""))
            .replace("\"data_path\":null", &format!("\"data_path\":\"{bad}\""));
        std::fs::write(&path, text).unwrap();
        let e = store.load_manifest(&r).unwrap_err();
        assert!(
            matches!(&e, StoreError::InconsistentManifest { reason, .. } if reason.contains("data_path")),
            "{bad}: {e}"
        );
    }
    std::fs::write(
        &path,
        good.replace("\"data_path\": null", "\"data_path\": \"/Users\""),
    )
    .unwrap();
    let (m, _) = store.load_manifest(&r).unwrap();
    assert_eq!(m.hints.data_path.as_deref(), Some("/Users"));
}
