mod common;
#[test]
fn placeholder() { let _ = common::manifest_dir(); }
