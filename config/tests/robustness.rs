//! The parser never panics: arbitrary bytes, arbitrary strings, YAML-ish token soup and
//! mutated real manifests go through `parse_file` as `.yaml` and as `.json`.

mod common;

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use svcplane_config::{ParseOptions, ParsedFile, parse_file};

fn parse_both(text: &str) -> [ParsedFile; 2] {
    let opts = ParseOptions::default();
    ["fuzz.yaml", "fuzz.json"].map(|name| {
        let label: Arc<Path> = Arc::from(Path::new(name));
        let p = parse_file(&label, text, &opts);
        for e in &p.errors {
            // Diagnostics render, and always name the file they are about.
            assert!(e.to_string().starts_with(name), "{e}");
        }
        p
    })
}

/// Real manifests the mutations start from.
fn seeds() -> Vec<String> {
    vec![
        common::fixture("kubectl-get-all.yaml"),
        common::fixture("kubectl-get-svc.json"),
        format!("{}---\n{}", common::GOOD_BEFORE, common::GOOD_AFTER),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Removes `len` bytes at `at` (positions are fractions of the text, in 1/10000).
    Delete {
        at: u16,
        len: u16,
    },
    Insert {
        at: u16,
        text: String,
    },
    /// Copies the line at `from` over the line at `to`.
    CopyLine {
        from: u16,
        to: u16,
    },
    /// Changes the indentation of one line.
    Indent {
        line: u16,
        spaces: u8,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = prop_oneof![
        Just("-".to_owned()),
        Just(": ".to_owned()),
        Just("\n".to_owned()),
        Just("---\n".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("<<: ".to_owned()),
        Just("[".to_owned()),
        Just("}".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("!!binary ".to_owned()),
        Just("null".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("-1".to_owned()),
        Just("kind: List\nitems:\n".to_owned()),
        Just("\u{feff}".to_owned()),
        "\\PC{0,8}",
    ];
    prop_oneof![
        (0u16..10000, 1u16..200).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (0u16..10000, token).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (0u16..10000, 0u16..10000).prop_map(|(from, to)| Mutation::CopyLine { from, to }),
        (0u16..10000, 0u8..9).prop_map(|(line, spaces)| Mutation::Indent { line, spaces }),
    ]
}

/// The char boundary at `frac`/10000 of `s`.
fn boundary(s: &str, frac: u16) -> usize {
    let mut i = s.len() * usize::from(frac) / 10000;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, m: &Mutation) -> String {
    match m {
        Mutation::Delete { at, len } => {
            let start = boundary(text, *at);
            let mut end = (start + usize::from(*len)).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            format!("{}{}", &text[..start], &text[end..])
        }
        Mutation::Insert { at, text: ins } => {
            let i = boundary(text, *at);
            format!("{}{ins}{}", &text[..i], &text[i..])
        }
        Mutation::CopyLine { from, to } => {
            let mut lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                return text.to_owned();
            }
            let pick = |f: u16| lines.len() * usize::from(f) / 10000;
            let (from, to) = (pick(*from), pick(*to));
            lines[to] = lines[from];
            lines.join("\n")
        }
        Mutation::Indent { line, spaces } => {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.is_empty() {
                return text.to_owned();
            }
            let i = lines.len() * usize::from(*line) / 10000;
            let body = lines[i].trim_start().to_owned();
            lines[i] = format!("{}{body}", " ".repeat(usize::from(*spaces)));
            lines.join("\n")
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_both(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        parse_both(&text);
    }

    #[test]
    fn yaml_token_soup_never_panics(
        tokens in prop::collection::vec(
            prop::sample::select(vec![
                "apiVersion: v1\n", "kind: Service\n", "kind: List\n", "items:\n", "- ",
                "metadata:\n", "  name: web\n", "spec:\n", "  ports:\n", "  - port: 80\n",
                "    targetPort: http\n", "    nodePort: 30080\n", "  clusterIP: None\n",
                "  clusterIPs: [10.0.0.1, 'fd00::1']\n", "  type: NodePort\n",
                "addressType: IPv6\n", "endpoints:\n", "- addresses: [1.2.3.4]\n",
                "kind: EndpointSlice\n", "apiVersion: discovery.k8s.io/v1\n", "kind: Pod\n",
                "---\n", "...\n", "# c\n", "{", "}", "[", "]", ",", "&x ", "*x", "<<: *x\n",
                "  ", "\t", "\"", "'", ": ", "? ", "|\n", ">-\n", "%YAML 1.2\n", "!!str ",
                "~\n", "null\n", "1e999\n", "0x10\n",
            ]),
            0..40,
        )
    ) {
        parse_both(&tokens.concat());
    }

    #[test]
    fn mutated_manifests_never_panic(
        seed in 0usize..3,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seeds();
        let mut text = seeds[seed].clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        parse_both(&text);
    }
}

#[test]
fn pathological_inputs_are_errors_not_crashes() {
    let deep_yaml = "a: ".to_owned() + &"[".repeat(100_000);
    let deep_flow = "[".repeat(50_000) + &"]".repeat(50_000);
    let deep_json = "{\"a\":".repeat(50_000) + "1" + &"}".repeat(50_000);
    let deep_block: String = (0..3000)
        .map(|i| format!("{}k:\n", " ".repeat(i)))
        .collect();
    let bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
                c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
                e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]\n";
    let recursive = "a: &a [*a]\n";
    let huge_numbers = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  \
                        - port: 99999999999999999999999\n    nodePort: -99999999999\n  \
                        sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      \
                        timeoutSeconds: 1e400\n";
    let nul = "apiVersion: v1\0\nkind: Service\n";
    for text in [
        deep_yaml.as_str(),
        &deep_flow,
        &deep_json,
        &deep_block,
        bomb,
        recursive,
        huge_numbers,
        nul,
    ] {
        let [yaml, json] = parse_both(text);
        assert!(yaml.objects.is_empty() && json.objects.is_empty());
        assert!(
            !yaml.errors.is_empty() || !yaml.warnings.is_empty(),
            "{:.80}",
            text
        );
    }
}

#[test]
fn mutated_manifests_also_load_through_a_snapshot() {
    // The snapshot build (dedupe, frontend claims, endpoint resolution) on damaged input.
    let seeds = seeds();
    let mut dir = common::Dir::new();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for round in 0..24 {
        let mutations = prop::collection::vec(mutation(), 1..4)
            .new_tree(&mut runner)
            .unwrap_or_else(|e| panic!("{e}"))
            .current();
        for (i, seed) in seeds.iter().enumerate() {
            let mut text = seed.clone();
            for m in &mutations {
                text = apply(&text, m);
            }
            let name = if i == 1 { "b.json" } else { "a.yaml" };
            dir.write(&format!("{round}-{i}-{name}"), &text);
        }
        let snap = dir.reload();
        for view in snap.ports().values() {
            for (frontend, _) in view.frontends() {
                assert!(
                    snap.by_frontend(&frontend).is_some(),
                    "{frontend} is indexed"
                );
            }
        }
    }
}
