//! No arrow runs back up the layers: domain ← ports ← flows ← adapters / config / http ←
//! handlers / wiring. Checked on the source text (a `use` of a higher layer fails it).

use std::path::Path;

fn sources(dir: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
        }
    }
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

fn assert_no_import(layer: &str, files: Vec<(String, String)>, forbidden: &[&str]) {
    for (path, text) in files {
        for f in forbidden {
            // code lines only, not comments
            let hit = text.lines().filter(|l| !l.trim_start().starts_with("//")).any(|l| l.contains(f));
            assert!(!hit, "{layer}: {path} uses {f}");
        }
    }
}

#[test]
fn the_domain_depends_on_nothing_of_paykey_above_it() {
    assert_no_import(
        "domain",
        sources("domain"),
        &[
            "crate::ports",
            "crate::flows",
            "crate::adapters",
            "crate::config",
            "crate::http",
            "crate::handlers",
            "crate::wiring",
        ],
    );
}

#[test]
fn the_flows_use_ports_and_domain_only() {
    assert_no_import(
        "flows",
        sources("flows"),
        &[
            "crate::adapters",
            "crate::config",
            "crate::http",
            "crate::handlers",
            "crate::wiring",
            "aws_sdk",
            "stripe::",
            "lambda_http",
        ],
    );
}

#[test]
fn config_does_not_import_adapters() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config.rs");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_no_import(
        "config",
        vec![(path.display().to_string(), text)],
        &["crate::adapters", "crate::handlers", "crate::wiring"],
    );
}
