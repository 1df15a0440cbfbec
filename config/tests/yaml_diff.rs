//! Differential tests: `yaml::documents` against serde-saphyr's
//! `from_multiple::<Spanned<Value>>`, which it replaced in `parse_file`. Whenever
//! serde-saphyr reads a text, ours reads the same documents with the same values and lines;
//! whenever serde-saphyr rejects it, ours rejects it too. Inputs: every file of the shared
//! corpus, the fixtures and the examples, hand-picked edge cases, budget limits, generated
//! YAML and mutated real manifests. Errors must be found on the same line, too.
//!
//! Every input also goes through `parse_file` twice: on its fast path (events straight into
//! the k8s-openapi types, where the input allows it) and through `parse_file_via_values`;
//! the two must give the same objects, errors and warnings.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{Value, json};
use std::sync::Arc;

use svcplane_config::{ParseOptions, parse_file, parse_file_via_values, yaml};

type Docs = Vec<(usize, Value)>;

/// Documents, or the line of the error.
fn saphyr(text: &str) -> Result<Docs, Option<usize>> {
    serde_saphyr::from_multiple::<serde_saphyr::Spanned<Value>>(text)
        .map(|docs| {
            docs.into_iter()
                .map(|d| (d.referenced.line() as usize, d.value))
                .collect()
        })
        .map_err(|e| e.location().map(|l| l.line() as usize))
}

fn ours(text: &str) -> Result<Docs, yaml::YamlError> {
    yaml::documents(text)
}

/// `None` when both read the same documents, or both fail on the same line, and
/// `parse_file` gives the same result on both its paths; else what differs.
fn difference(text: &str) -> Option<String> {
    let label: Arc<Path> = Arc::from(Path::new("in.yaml"));
    let opts = ParseOptions::default();
    let (fast, reference) = (
        parse_file(&label, text, &opts),
        parse_file_via_values(&label, text, &opts),
    );
    if fast != reference {
        return Some(format!(
            "input {text:?}\n  parse_file:            {fast:?}\n  parse_file_via_values: {reference:?}"
        ));
    }
    match (saphyr(text), ours(text)) {
        (Ok(a), Ok(b)) if a == b => None,
        (Err(line), Err(e)) if line.is_none_or(|l| l == e.line()) => None,
        (a, b) => Some(format!(
            "input {text:?}\n  serde-saphyr: {a:?}\n  ours:         {b:?}"
        )),
    }
}

#[track_caller]
fn assert_same(text: &str) {
    if let Some(diff) = difference(text) {
        panic!("{diff}");
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every text file of the shared corpus (when present), the fixtures and the examples.
fn real_files() -> Vec<(PathBuf, String)> {
    let mut paths = Vec::new();
    for dir in [
        PathBuf::from("/work/shared/corpus"),
        repo().join("tests/fixtures"),
        repo().join("examples"),
    ] {
        files_under(&dir, &mut paths);
    }
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let text = fs::read_to_string(&p).ok()?;
            Some((p, text.strip_prefix('\u{feff}').unwrap_or(&text).to_owned()))
        })
        .collect()
}

#[test]
fn real_files_read_the_same() {
    let files = real_files();
    assert!(files.len() >= 5, "fixtures and examples are missing");
    let mut documents = 0;
    for (path, text) in &files {
        if let Some(diff) = difference(text) {
            panic!("{}: {diff}", path.display());
        }
        documents += ours(text).map_or(0, |d| d.len());
    }
    assert!(documents > 20, "only {documents} documents read");
}

#[test]
fn scalars_resolve_as_serde_saphyr_does() {
    let text = "\
a: 0755\nb: 1e3\nc: 0o17\nd: +5\ne: -0\nf: 1_000\ng: 99999999999999999999\nh: yes\n\
i: Off\nj: y\nl: !!int \"12\"\nm: !!str 12\nn: ! 12\no: !foo 12\np: !!float 3\nq: !!bool yes\n\
r: 0x_1\ns: .5\nt: 5.\nu: -.inf_x\nv: -0x10\nw: !!null x\nx: !foo\ny: !!str\nz: -00\n\
aa: 1.0\nab: 1e5\nac: -1.0e-3\nad: 0b101\nae: nan\naf: !!int -0x10\nag: !!float \"1e3\"\n\
ah: !!bool \"off\"\nai: !!null\naj: |\n  lit\n  x\nak: >-\n  fold\n  ed\nal: \"a\\tb\"\n\
am: 'it''s'\nan: !!binary aGVsbG8=\nao: 18446744073709551615\nap: 18446744073709551616\n\
aq: -9223372036854775808\nar: -9223372036854775809\nas: ~\nat: NULL\nau: \"null\"\nav: ''\n\
aw: 1__0\nax: _1\nay: 0x\naz: +.5\nba: 1e-400\nbb: \"yes\"\nbc: TRUE\nbd: tRuE\nbe: 08\n";
    assert_same(text);
    let docs = ours(text).unwrap();
    let v = &docs[0].1;
    for (key, want) in [
        ("a", json!(755.0)),
        ("c", json!(15)),
        ("d", json!(5)),
        ("f", json!(1000)),
        ("h", json!(true)),
        ("i", json!(false)),
        ("l", json!(12)),
        ("m", json!("12")),
        ("o", json!(12)),
        ("r", json!("0x_1")),
        ("w", Value::Null),
        ("x", Value::Null),
        ("y", json!("")),
        ("an", json!("hello")),
        ("ap", json!(18446744073709551616.0)),
        ("au", json!("null")),
        ("bd", json!(true)),
    ] {
        assert_eq!(v[key], want, "{key}");
    }
}

#[test]
fn edge_cases_match() {
    let cases = [
        "",
        "\n",
        "# only a comment\n",
        "---\n---\n",
        "--- ~\n--- null\n--- !!null x\n--- !foo\n--- !!str\n--- \"\"\n--- !include\n",
        "a: 1\n...\n---\nb: 2\n",
        "- a\n- b\n",
        "just a scalar",
        "---\n# c\n\n  a: 1\n---\n- x\n",
        "a: 1\na: 2\n",
        "0x1: a\n1: b\n",
        "\"1\": a\n1: b\n",
        "a: x\n!foo a: y\n",
        "!foo a: x\na: y\n",
        "+1: a\n1: b\n",
        "01: a\n1: b\n",
        "~: 1\n",
        "? [a]\n: 1\n",
        "{a: 1}: 2\n",
        "null: 1\n",
        "\"~\": 1\n",
        "!!str ~: 1\n",
        "!!int 1: a\n",
        "!!binary YQ==: x\n",
        "a: .inf\n",
        "a: -.INF\n",
        "a: .NaN\n",
        "a: 1e999\n",
        "a: [1e999]\n",
        "a: !!float .nan\n",
        "a: !!int 1.5\n",
        "a: !!timestamp 2001-01-01\n",
        "a: !!str [1]\n",
        "a: !!map [1]\n",
        "a: !!seq {b: 1}\n",
        "a: !custom [1, !x {b: ~}]\n",
        "a: !time 5\n",
        "a: !!binary aGVsbG8\n",
        "a: !!binary /w==\n",
        "a: &x 1\nb: *x\n",
        "a: &x [1, 2]\nb: *x\nc: [*x, *x]\n",
        "a: &x {k: v}\nb:\n  <<: *x\n  k: own\n",
        "a: &x {k: v}\nb:\n  k: own\n  <<: *x\n",
        "a: &x {k: v}\nb: &y {k: w, z: 1}\nc:\n  <<: [*x, *y]\n",
        "a: &x {k: v}\nc:\n  <<: [[*x]]\n",
        "c:\n  <<: ~\n  a: 1\n",
        "c:\n  <<: [~, {a: 1}]\n",
        "c:\n  <<: 5\n",
        "c:\n  <<: [5]\n",
        "c:\n  <<: {a: 1, a: 2}\n",
        "c:\n  a: 1\n  <<: {a: .inf}\n",
        "c:\n  <<: {a: .inf}\n",
        "c:\n  !!merge <<: {a: 1}\n",
        "c:\n  \"<<\": {a: 1}\n",
        "c:\n  ! <<: {a: 1}\n",
        "c:\n  <<: {<<: {a: 1}, b: 2}\n",
        "c:\n  <<: {<<: {a: 1}, a: 2}\n",
        "c:\n  <<: [{a: 1}, {a: 2, b: 3}]\n",
        "a: &a {x: 1}\nb: &b {<<: *a, x: 2}\nc: {<<: [*b, *a]}\nd: {<<: [*a, *b]}\n",
        "c:\n  <<: {a: 1}\n  <<: {a: 2, b: 3}\n",
        "c:\n  <<: {[x]: 1}\n",
        "<<: {[a]: a}\na: [, a]\n",
        "<<: {[a]: 1, [a]: 2}\nb: [, a]\n",
        "<<: {[a]: 1, !foo [a]: 2}\nb: [, a]\n",
        "<<: {{a: 1, b: 2}: x, {b: 2, a: 1}: y}\nb: [, a]\n",
        "<<: {!map {}: 1, {}: 2}\nb: [, a]\n",
        "<<: {!!map {}: 1, {}: 2}\nb: [, a]\n",
        "<<: {[0x1]: 1, [1]: 2}\nb: [, a]\n",
        "a: &a {x: *a, x: *a}\n",
        "c:\n  a: 1\n  <<: {!!int 1: 2}\n",
        "c:\n  1: 1\n  <<: {!!int 1: 2}\n",
        "c:\n  a: x\n  <<: {!foo a: y}\n",
        "a: &a [*a]\n",
        "a: &a {b: *a}\n",
        "a: &a {b: 1, <<: {b: *a}}\n",
        "x: 1\n<<: &m {x: *m}\n",
        "a: *nope\n",
        "a: &x 1\n---\nb: *x\n",
        "&k key: v\nother: *k\n",
        "&k 5: v\nother: *k\n",
        "a: &x ~\nb: *x\n",
        "<<: &m {a: 1}\n*m : 2\n",
        "a: b: c\n",
        "a: [b\n",
        "\t- x\n",
        "a: 'unterminated\n",
        "%YAML 1.2\n---\na: 1\n",
        "%TAG !e! tag:yaml.org,2002:\n---\na: !e!int 5\n",
        "a: !<tag:yaml.org,2002:str> 5\n",
        "a: !!value x\n",
        "a: !!merge x\n",
        "!!value =: 1\n",
        "a: \"multi\n  line\"\n",
        "a: >\n  folded\n\n  para\n",
        "a: |+\n  keep\n\n",
        "a: \"\\u00e9\\x41\"\n",
        "key with spaces: value with: colon\n",
        "a: 'x' # comment\n",
        "? a\n: b\n",
        "a:\n- 1\n- 2\n",
        "- - - x\n",
        "[a, b]: c\n",
        "a: {b: [c, {d: e}]}\n",
        "a: !!str\nb: !!int\n",
        "a: !!bool\n",
        "a: !!float\n",
        "a: !!binary\n",
        "\u{feff}a: 1\n",
        "a: 1\r\nb: 2\r\n",
    ];
    let mut failures = Vec::new();
    for text in cases {
        if let Some(diff) = difference(text) {
            failures.push(diff);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// serde-saphyr's default budget, at and just past each limit (the total of replayed events
/// per document, 1 000 000, cannot be reached before the node limit).
#[test]
fn budget_limits_match() {
    let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
    let block_nested: String = (0..65).map(|i| format!("{}k:\n", "  ".repeat(i))).collect();
    let docs = |n: usize| "---\na: 1\n".repeat(n);
    let list = |n: usize| "- x\n".repeat(n);
    let ratio = |aliases: usize, anchors: usize| {
        let mut t = String::new();
        for i in 0..anchors {
            let _ = writeln!(t, "a{i}: &a{i} x");
        }
        for i in 0..aliases {
            let _ = writeln!(t, "b{i}: *a{}", i % anchors.max(1));
        }
        t
    };
    let merges = |n: usize| {
        let mut t = String::new();
        for i in 0..n {
            let _ = writeln!(t, "k{i}: {{<<: {{x: 1}}, y: {i}}}");
        }
        t
    };
    // Every event is retained once per anchored collection it is in: 2 550 + 50 n.
    let retained = |depth: usize, inner: &str| {
        (0..depth).map(|i| format!("&n{i} [")).collect::<String>() + inner + &"]".repeat(depth)
    };
    let many_x = |n: usize| vec!["x"; n].join(",");
    let escaped = format!("\"{}\\t\"", "y".repeat(1_400_000));
    let big = "y".repeat(1_000_000);
    let copies = |n: usize| format!("a: &a {big}\nb: [{}]\n", vec!["*a"; n].join(","));
    let aliases = |n: usize| {
        let mut t: String = (0..5001).map(|i| format!("a{i}: &a{i} x\n")).collect();
        let refs: Vec<String> = (0..n).map(|i| format!("*a{}", i % 5001)).collect();
        let _ = writeln!(t, "b: [{}]", refs.join(","));
        t
    };
    let anchors = |n: usize| {
        (0..n)
            .map(|i| format!("a{i}: &a{i} x\n"))
            .collect::<String>()
    };
    // Depth reached through an alias.
    let deep_alias = format!("a: &d {}\nb: [[[*d]]]\n", nested(62));
    let replayed = format!(
        "a: &a [{}]\nb: &b [{}]\nc: [{}]\n",
        ["x"; 1000].join(","),
        ["*a"; 100].join(","),
        ["*b"; 9].join(",")
    );
    for text in [
        nested(63),
        nested(64),
        nested(65),
        format!("a: {}", nested(63)),
        format!("a: {}", nested(64)),
        block_nested,
        deep_alias,
        docs(1023),
        docs(1024),
        docs(1025),
        list(249_999),
        list(250_000),
        ratio(99, 1),
        ratio(100, 10),
        ratio(101, 10),
        ratio(100, 9),
        merges(10_000),
        merges(10_001),
        replayed,
        retained(50, &many_x(19_949)),
        retained(50, &many_x(19_950)),
        retained(47, &escaped),
        retained(48, &escaped),
        copies(66),
        copies(67),
        aliases(50_000),
        aliases(50_001),
        anchors(50_000),
        anchors(50_001),
    ] {
        assert_same(&text);
    }
}

#[test]
fn alias_bombs_and_deep_nesting_are_errors() {
    let bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
                c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
                e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]\n";
    let merge_bomb = "a: &a {a0: 1, a1: 1, a2: 1, a3: 1, a4: 1, a5: 1, a6: 1, a7: 1}\n\
                      b: &b {<<: [*a, *a, *a, *a, *a, *a, *a, *a], b: 1}\n\
                      c: &c {<<: [*b, *b, *b, *b, *b, *b, *b, *b], c: 1}\n\
                      d: &d {<<: [*c, *c, *c, *c, *c, *c, *c, *c], d: 1}\n\
                      e: &e {<<: [*d, *d, *d, *d, *d, *d, *d, *d], e: 1}\n\
                      f: &f {<<: [*e, *e, *e, *e, *e, *e, *e, *e], f: 1}\n\
                      g: &g {<<: [*f, *f, *f, *f, *f, *f, *f, *f], g: 1}\n";
    let deep_flow = "[".repeat(50_000) + &"]".repeat(50_000);
    let deep_block: String = (0..3000)
        .map(|i| format!("{}k:\n", " ".repeat(i)))
        .collect();
    for text in [bomb, merge_bomb, &deep_flow, &deep_block] {
        assert!(ours(text).is_err());
        assert_same(text);
    }
}

// === generated YAML ===

/// A generated node: properties (anchor, tag) and content.
#[derive(Clone, Debug)]
enum Gen {
    Scalar(&'static str, &'static str),
    Block(&'static str, &'static str),
    Alias(&'static str),
    Seq(&'static str, bool, Vec<Gen>),
    Map(&'static str, bool, Vec<(&'static str, Gen)>),
}

/// Properties of a scalar: mostly none or an anchor, rarely a tag that may not fit.
fn scalar_props() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        30 => Just(""),
        4 => prop::sample::select(&["&a ", "&b ", "&c "][..]),
        1 => prop::sample::select(
            &[
                "!!str ", "!foo ", "! ", "!!int ", "!!float ", "!!bool ", "!!null ", "!!binary ",
                "!!timestamp ", "!include ", "!!merge ", "!!value ", "!time ", "!int ", "!str ",
                "&b !!str ", "&a !foo ", "!<tag:yaml.org,2002:str> ", "!!map ",
            ][..]
        ),
    ]
}

/// Properties of a collection: mostly none or an anchor.
fn collection_props(map: bool) -> impl Strategy<Value = &'static str> {
    let own = if map { "!!map " } else { "!!seq " };
    prop_oneof![
        30 => Just(""),
        6 => prop::sample::select(&["&a ", "&b ", "&c "][..]),
        3 => prop::sample::select(vec!["!foo ", "! ", own, "&c !bar ", "!include "]),
        1 => prop::sample::select(&["!!str ", "!!map ", "!!seq ", "!!int "][..]),
    ]
}

/// Scalars that make a value whatever their position.
const SAFE_SCALARS: &[&str] = &[
    "a",
    "b",
    "word",
    "two words",
    "web",
    "10.96.0.1",
    "8080",
    "TCP",
    "<<",
    "~",
    "null",
    "Null",
    "",
    "true",
    "yes",
    "Off",
    "y",
    "n",
    "0",
    "-0",
    "00",
    "0755",
    "-007",
    "+5",
    "1_000",
    "1__0",
    "0x1F",
    "0o17",
    "0b101",
    "0x",
    "1e3",
    "1.5",
    ".5",
    "5.",
    "99999999999999999999",
    "-99999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "nan",
    "inf",
    "\"quoted\"",
    "\"1\"",
    "'1'",
    "\"\"",
    "''",
    "\"~\"",
    "\"<<\"",
    "\"a\\tb\"",
    "'it''s'",
    "2001-12-14",
    "=",
    "x #c",
    "!!int 5",
    "!!int -0x10",
    "!!str 5",
    "!!str",
    "!!float 1.5",
    "!!float 3",
    "!!bool yes",
    "!!null x",
    "!!binary aGVsbG8=",
    "!foo 12",
    "!foo ~",
    "! 12",
    "! ~",
    "!!merge x",
    "!!value y",
    "!int 7",
    "!str 8",
    "!include inc.yaml",
];

/// Scalars that are errors in a value position (some also elsewhere).
const RISKY_SCALARS: &[&str] = &[
    ".inf",
    "-.inf",
    ".nan",
    "1e999",
    "!!int x",
    "!!float x",
    "!!bool 2",
    "!!binary %%",
    "!!timestamp 2001-01-01",
    "!time 5",
    "!!binary /w==",
];

fn scalar_text() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        40 => prop::sample::select(SAFE_SCALARS),
        1 => prop::sample::select(RISKY_SCALARS),
    ]
}

const BLOCKS: &[&str] = &["|\n", "|-\n", ">\n", ">-\n", "|+\n"];

fn key() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        40 => prop::sample::select(
            &[
                "a", "b", "c", "d", "e", "f", "g", "h", "name", "port", "kind", "spec", "x", "y",
                "z", "w", "u", "v", "labels", "items",
            ][..]
        ),
        4 => prop::sample::select(&["1", "01", "0x1", "+1", "0", "-0", "1.0", "true"][..]),
        3 => prop::sample::select(
            &[
                "\"a\"", "'1'", "!!str a", "!foo a", "!!int 1", "!!merge <<", "\"<<\"", "&k x",
                "!!binary YQ==", "\"\"", "! ~", "!!value =",
            ][..]
        ),
        1 => prop::sample::select(&["~", "null", "[a]", "{a: 1}", "!!null", "*a", "? x", "*k"][..]),
    ]
}

fn gen_leaf() -> impl Strategy<Value = Gen> {
    prop_oneof![
        8 => (scalar_props(), scalar_text()).prop_map(|(p, s)| Gen::Scalar(p, s)),
        1 => (scalar_props(), prop::sample::select(BLOCKS)).prop_map(|(p, b)| Gen::Block(p, b)),
        2 => prop::sample::select(&["*a", "*b", "*c"][..]).prop_map(Gen::Alias),
    ]
}

/// A scalar without properties or aliases (anchor definitions).
fn plain_leaf() -> impl Strategy<Value = Gen> {
    scalar_text().prop_map(|s| Gen::Scalar("", s))
}

/// A merge value: an alias, a list of aliases, or an inline mapping.
fn merge_value() -> impl Strategy<Value = Gen> {
    prop_oneof![
        8 => prop::sample::select(&["*a", "*b", "*c"][..]).prop_map(Gen::Alias),
        2 => prop::collection::vec(prop::sample::select(&["*a", "*b", "*c", "~"][..]), 1..4)
            .prop_map(|items| {
                let items = items.into_iter().map(|a| match a {
                    "~" => Gen::Scalar("", "~"),
                    a => Gen::Alias(a),
                });
                Gen::Seq("", true, items.collect())
            }),
        2 => prop::collection::vec((key(), gen_leaf()), 0..4)
            .prop_map(|entries| Gen::Map("", true, entries)),
        1 => (
            prop::collection::vec((key(), gen_leaf()), 0..3),
            prop::sample::select(&["*a", "*b", "*c"][..]),
        )
            .prop_map(|(mut entries, a)| {
                entries.insert(0, ("<<", Gen::Alias(a)));
                Gen::Map("", true, entries)
            }),
        1 => gen_leaf(),
        1 => prop::sample::select(&["~", "5"][..]).prop_map(|s| Gen::Scalar("", s)),
    ]
}

fn gen_node() -> impl Strategy<Value = Gen> {
    gen_leaf().prop_recursive(5, 64, 6, |inner| {
        let entry = prop_oneof![
            8 => (key(), inner.clone()),
            1 => merge_value().prop_map(|v| ("<<", v)),
        ];
        prop_oneof![
            (
                collection_props(false),
                any::<bool>(),
                prop::collection::vec(inner, 0..5)
            )
                .prop_map(|(p, flow, items)| Gen::Seq(p, flow, items)),
            (
                collection_props(true),
                any::<bool>(),
                prop::collection::vec(entry, 0..6)
            )
                .prop_map(|(p, flow, entries)| Gen::Map(p, flow, entries)),
        ]
    })
}

/// `g` with `props` (an anchor) in place of its own properties.
fn anchored(g: Gen, props: &'static str) -> Gen {
    match g {
        Gen::Scalar(_, s) => Gen::Scalar(props, s),
        Gen::Block(_, b) => Gen::Block(props, b),
        Gen::Alias(_) => Gen::Scalar(props, "x"),
        Gen::Seq(_, flow, items) => Gen::Seq(props, flow, items),
        Gen::Map(_, flow, entries) => Gen::Map(props, flow, entries),
    }
}

/// Mostly a block mapping that first defines anchors `a`, `b` and `c` (mostly mappings,
/// so merges of them work), then anything.
fn gen_document() -> impl Strategy<Value = Gen> {
    // A definition may merge the anchors defined before it.
    let def = |earlier: &'static [&'static str]| {
        let merge = prop::sample::select(earlier).prop_map(|a| ("<<", Gen::Alias(a)));
        let entry = prop_oneof![6 => (key(), plain_leaf()), 1 => merge];
        prop_oneof![
            10 => prop::collection::vec(entry, 0..5)
                .prop_map(|entries| Gen::Map("", true, entries)),
            1 => prop::collection::vec(plain_leaf(), 0..4).prop_map(|i| Gen::Seq("", true, i)),
            1 => plain_leaf(),
        ]
    };
    prop_oneof![
        8 => (def(&["~"]), def(&["*a"]), def(&["*a", "*b"]), gen_node()).prop_map(|(a, b, c, rest)| {
            let mut entries = vec![
                ("da", anchored(a, "&a ")),
                ("db", anchored(b, "&b ")),
                ("dc", anchored(c, "&c ")),
            ];
            match rest {
                Gen::Map(_, _, more) => entries.extend(more),
                other => entries.push(("rest", other)),
            }
            Gen::Map("", false, entries)
        }),
        1 => gen_node(),
    ]
}

fn is_block(g: &Gen) -> bool {
    match g {
        Gen::Seq(_, flow, items) => !flow && !items.is_empty(),
        Gen::Map(_, flow, entries) => !flow && !entries.is_empty(),
        _ => false,
    }
}

/// Flow-context rendering.
fn inline(g: &Gen) -> String {
    match g {
        Gen::Scalar(p, s) => format!("{p}{s}"),
        Gen::Block(p, _) => format!("{p}\"block\\ntext\""),
        Gen::Alias(a) => (*a).to_owned(),
        Gen::Seq(p, _, items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("{p}[{}]", items.join(", "))
        }
        Gen::Map(p, _, entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{k}: {}", inline(v)))
                .collect();
            format!("{p}{{{}}}", entries.join(", "))
        }
    }
}

/// Writes `g` after a `key:` or `-` already on the line.
fn after_indicator(g: &Gen, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent + 2);
    match g {
        Gen::Block(p, header) => {
            let _ = write!(out, " {p}{header}{pad}block\n{pad}  text\n");
        }
        Gen::Seq(p, _, items) if is_block(g) => {
            let _ = writeln!(out, " {}", p.trim_end());
            for item in items {
                out.push_str(&pad);
                out.push('-');
                after_indicator(item, indent + 2, out);
            }
        }
        Gen::Map(p, _, entries) if is_block(g) => {
            let _ = writeln!(out, " {}", p.trim_end());
            for (k, v) in entries {
                let _ = write!(out, "{pad}{k}:");
                after_indicator(v, indent + 2, out);
            }
        }
        g => {
            let _ = writeln!(out, " {}", inline(g));
        }
    }
}

fn document(g: &Gen) -> String {
    let mut out = String::new();
    match g {
        Gen::Seq(p, _, items) if is_block(g) => {
            let _ = writeln!(out, "{}", p.trim_end());
            for item in items {
                out.push('-');
                after_indicator(item, 0, &mut out);
            }
        }
        Gen::Map(p, _, entries) if is_block(g) => {
            let _ = writeln!(out, "{}", p.trim_end());
            for (k, v) in entries {
                out.push_str(k);
                out.push(':');
                after_indicator(v, 0, &mut out);
            }
        }
        Gen::Block(..) => {
            out.push_str("root:");
            after_indicator(g, 0, &mut out);
        }
        g => {
            out.push_str(&inline(g));
            out.push('\n');
        }
    }
    out
}

fn gen_stream() -> impl Strategy<Value = String> {
    let separator = prop::sample::select(
        &[
            "---\n",
            "---\n",
            "...\n---\n",
            "--- # c\n",
            "---\n# only a comment\n---\n",
        ][..],
    );
    prop::collection::vec((separator, gen_document()), 1..4).prop_map(|docs| {
        docs.iter()
            .enumerate()
            .map(|(i, (sep, g))| {
                let sep = if i == 0 { "" } else { *sep };
                format!("{sep}{}", document(g))
            })
            .collect()
    })
}

// === mutated manifests ===

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
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = prop_oneof![
        prop::sample::select(
            &[
                "-",
                ": ",
                "\n",
                "---\n",
                "&a ",
                "*a",
                "<<: *a\n",
                "<<: ",
                "[",
                "}",
                "\"",
                "'",
                "!!binary ",
                "!!str ",
                "!foo ",
                "!!int ",
                "null",
                "~",
                "yes",
                "0x1F",
                "1e999",
                ".inf",
                "99999999999999999999",
                "-1",
                "0755",
                "? ",
                "|\n",
                ">-\n",
                "# c\n",
                "\t",
                "  ",
                "a: 1\n",
                "a: 2\n",
                "\"80\"",
                "name: x\n",
                "kind: Pod\n",
                "ready: false\n",
                "{}",
                "\u{feff}",
            ][..]
        )
        .prop_map(str::to_owned),
        "\\PC{0,6}",
    ];
    prop_oneof![
        (0u16..10000, 1u16..80).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (0u16..10000, token).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (0u16..10000, 0u16..10000).prop_map(|(from, to)| Mutation::CopyLine { from, to }),
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
    }
}

/// Small real manifests to mutate (big ones make each case slow).
fn seeds() -> Vec<String> {
    let mut seeds: Vec<String> = real_files()
        .into_iter()
        .map(|(_, text)| text)
        .filter(|t| t.len() < 8_000)
        .collect();
    seeds.push(
        "base: &base\n  app: web\n  tier: front\nsvc:\n  metadata:\n    labels:\n      <<: *base\n      \
         tier: back\n  ports: [{port: 80, targetPort: 8080}, {port: 443}]\n"
            .to_owned(),
    );
    seeds
}

/// `PROPTEST_CASES` when set (for long runs), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(3000), ..ProptestConfig::default() })]

    #[test]
    fn generated_yaml_reads_the_same(text in gen_stream()) {
        if let Some(diff) = difference(&text) {
            return Err(TestCaseError::fail(diff));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1500), ..ProptestConfig::default() })]

    #[test]
    fn mutated_manifests_read_the_same(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let seeds = seeds();
        let mut text = seed.get(&seeds).clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        if let Some(diff) = difference(&text) {
            return Err(TestCaseError::fail(diff));
        }
    }
}

/// The generators must keep producing both accepted and rejected texts, or the properties
/// above would test little.
#[test]
fn generators_make_valid_and_invalid_yaml() {
    use proptest::strategy::ValueTree as _;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut sample = |n: usize, strategy: &dyn Fn(&mut TestRunner) -> String| {
        let ok = (0..n)
            .filter(|_| saphyr(&strategy(&mut runner)).is_ok())
            .count();
        ok as f64 / n as f64
    };
    let generated = sample(600, &|r| gen_stream().new_tree(r).unwrap().current());
    let seeds = seeds();
    let mutated = sample(300, &|r| {
        let seed = any::<prop::sample::Index>().new_tree(r).unwrap().current();
        let mutations = prop::collection::vec(mutation(), 1..5)
            .new_tree(r)
            .unwrap()
            .current();
        mutations
            .iter()
            .fold(seed.get(&seeds).clone(), |text, m| apply(&text, m))
    });
    for (name, ok) in [("generated", generated), ("mutated", mutated)] {
        assert!(
            (0.15..0.85).contains(&ok),
            "{name}: {ok:.2} of texts accepted"
        );
    }
}
