//! The design rules ARCHITECTURE.md states, checked on the source itself: the driver is pure,
//! wire types stay at the edges, the scheduler's modules form layers without cycles, one place
//! changes job state, and no file grows past what a reader can hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir` (relative to the workspace root), with its text.
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(path: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join(dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let rel = p
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .to_string();
            (rel, text)
        })
        .collect()
}

/// The code of a file without comments (so that docs may name what code must not use).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_driver_does_no_io_awaits_nothing_and_reads_no_clock() {
    let forbidden = [
        "tokio",
        "tonic",
        "etcd_client",
        "prost",
        "ember_proto",
        "crate::runtime",
        "crate::api",
        "crate::server",
        "MetaStore",
        ".await",
        "async fn",
        "SystemTime",
        "Instant::now",
        "std::fs",
        "std::net",
        "spawn",
    ];
    let files = sources("scheduler/src/driver");
    assert!(files.len() >= 5, "the driver's files were not found");
    for (path, text) in files {
        let code = code(&text);
        for word in forbidden {
            assert!(
                !code.contains(word),
                "{path} uses `{word}`: the driver is pure (events in, effects out)"
            );
        }
    }
}

#[test]
fn wire_types_stay_in_proto_and_transport_modules() {
    // Modules whose job is a wire: gRPC/Flight handlers, servers, and gRPC clients.
    let transports = [
        "scheduler/src/api/",
        "scheduler/src/server.rs",
        "scheduler/src/runtime/executors.rs",
        "executor/src/service.rs",
        "executor/src/server.rs",
        "executor/src/scheduler_link.rs",
        "client/src/client.rs",
    ];
    let mut checked = 0;
    for dir in ["core", "scheduler", "executor", "client", "src"] {
        for (path, text) in sources(dir) {
            checked += 1;
            if transports.iter().any(|t| path.starts_with(t)) {
                continue;
            }
            let code = code(&text);
            for word in ["pb::", "prost::", "use ember_proto::pb"] {
                assert!(
                    !code.contains(word),
                    "{path} names `{word}`: prost types live in proto/ (records: \
                     ember_proto::records) and transport modules only"
                );
            }
        }
    }
    assert!(checked > 50, "only {checked} files were read");
}

#[test]
fn spark_connect_messages_stay_in_its_front_end() {
    let allowed = [
        "scheduler/src/api/spark_connect/",
        "scheduler/src/spark/",
        "scheduler/src/server.rs",
    ];
    let mut users = 0;
    for dir in ["core", "scheduler", "executor", "client", "src"] {
        for (path, text) in sources(dir) {
            if !code(&text).contains("ember_proto::spark") {
                continue;
            }
            assert!(
                allowed.iter().any(|a| path.starts_with(a)),
                "{path} names Spark Connect's messages: only its service and translator may"
            );
            users += 1;
        }
    }
    assert!(
        users >= 3,
        "only {users} files use Spark Connect's messages"
    );
}

/// The scheduler crate's top-level modules each file belongs to, and the ones it names.
fn scheduler_module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources("scheduler/src") {
        let rel = path.trim_start_matches("scheduler/src/");
        let module = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" {
            continue;
        }
        let deps = graph.entry(module.clone()).or_default();
        let code = code(&text);
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
        // `use super::` inside a module stays in it; sibling modules are reached by `crate::`.
    }
    graph
}

#[test]
fn the_scheduler_modules_form_layers_without_cycles() {
    let graph = scheduler_module_graph();
    for layer in ["api", "runtime", "driver", "planner", "config"] {
        assert!(graph.contains_key(layer), "module {layer} is missing");
    }
    // Depth-first search for a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == node) {
            panic!("import cycle: {} -> {node}", path[i..].join(" -> "));
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
    // The layers point one way: transports → runtime → driver.
    let uses = |a: &str, b: &str| graph.get(a).is_some_and(|d| d.contains(b));
    assert!(!uses("driver", "runtime") && !uses("driver", "api"));
    assert!(
        !uses("runtime", "api"),
        "the runtime must not know its transports"
    );
    assert!(uses("api", "runtime") && uses("runtime", "driver"));
}

#[test]
fn only_the_runtime_hands_events_to_the_driver() {
    for (path, text) in sources("scheduler/src") {
        if path.starts_with("scheduler/src/driver/") || path == "scheduler/src/runtime/mod.rs" {
            continue;
        }
        assert!(
            !code(&text).contains(".handle("),
            "{path} calls the driver directly: send events through Scheduler::dispatch"
        );
    }
}

#[test]
fn no_source_file_grows_past_800_lines() {
    for dir in [
        "core",
        "proto/src",
        "scheduler",
        "executor",
        "client",
        "src",
        "tests",
    ] {
        for (path, text) in sources(dir) {
            let lines = text.lines().count();
            assert!(
                lines <= 800,
                "{path} has {lines} lines: split it by responsibility"
            );
        }
    }
}

#[test]
fn executors_write_no_job_state() {
    for (path, text) in sources("executor/src") {
        let code = code(&text);
        // Its own membership record is the executor's to write; job records are not.
        for word in [
            "JobRecord",
            "StageOutput",
            "WriteRecord",
            "ScriptRecord",
            "Record::",
            "keys.job",
            "keys.write(",
            "stage_output(",
        ] {
            assert!(
                !code.contains(word),
                "{path} names `{word}`: executors report outcomes, the scheduler records jobs"
            );
        }
    }
}
