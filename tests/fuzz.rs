//! Property-based fuzzing, bounded in time, of what Ember reads from others: shuffle tickets
//! and their grants, stage plans and logical plans off the wire, stored records, Flight SQL
//! commands, and config files. Any input gives a value or an error — never a panic (a panic
//! in a server is a query of death). `EMBER_FUZZ_CASES` sets the cases per target (default
//! 2,000: a few seconds in all); a failure prints the smallest input proptest found, which then becomes a regression
//! case below.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use ember_core::shuffle::ShuffleTicket;
use ember_core::shuffle::grant::{Scope, TicketKey};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("EMBER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn runner() -> TestRunner {
    let cases = cases();
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Bytes near `valid`: flipped, cut, spliced and random.
fn mutations(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len().max(1);
    let flips = {
        let valid = valid.clone();
        proptest::collection::vec((0..len, any::<u8>()), 1..8).prop_map(move |edits| {
            let mut bytes = valid.clone();
            for (at, value) in edits {
                if let Some(b) = bytes.get_mut(at) {
                    *b = value;
                }
            }
            bytes
        })
    };
    let cut = {
        let valid = valid.clone();
        (0..len).prop_map(move |at| valid[..at.min(valid.len())].to_vec())
    };
    let spliced = {
        let valid = valid.clone();
        (0..len, proptest::collection::vec(any::<u8>(), 0..32)).prop_map(move |(at, junk)| {
            let at = at.min(valid.len());
            let mut bytes = valid[..at].to_vec();
            bytes.extend(junk);
            bytes.extend_from_slice(&valid[at..]);
            bytes
        })
    };
    prop_oneof![
        flips,
        cut,
        spliced,
        proptest::collection::vec(any::<u8>(), 0..256)
    ]
}

#[test]
fn tickets_and_grants_never_panic_and_only_real_grants_open() {
    let key = TicketKey::generate().unwrap();
    let scope = Scope {
        job_id: "0123456789abcdef",
        stage_id: 4,
    };
    let real = ShuffleTicket {
        job_id: scope.job_id.into(),
        stage_id: 4,
        map_partition: 1,
        partition: 2,
        grant: key.grant(scope, u64::MAX),
    };
    let tried = std::sync::atomic::AtomicU32::new(0);
    runner()
        .run(&mutations(real.to_bytes()), |bytes| {
            tried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(ticket) = ShuffleTicket::parse(&bytes) {
                let opened = key.verify(&ticket.grant, ticket.scope(), 0).is_ok();
                // Only the scheduler's own grant, for its own job and stage, opens anything.
                if opened {
                    prop_assert_eq!(&ticket.grant, &real.grant);
                    prop_assert_eq!(ticket.scope(), scope);
                }
            }
            Ok(())
        })
        .unwrap();
    // The runner really ran every case.
    assert!(tried.into_inner() >= cases());
}

#[test]
fn stage_plans_and_records_off_the_wire_never_panic() {
    let ctx = SessionContext::new();
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
    let plan = Arc::new(datafusion::physical_plan::empty::EmptyExec::new(schema));
    let valid = ember_proto::encode_plan(plan).unwrap().to_vec();
    let task_ctx = ctx.task_ctx();
    runner()
        .run(&mutations(valid), |bytes| {
            let _ = ember_proto::decode_plan(&bytes, &task_ctx);
            let _ = ember_proto::records::decode_job(&bytes);
            let _ = ember_proto::records::decode_stage_output(&bytes);
            let _ = ember_proto::records::decode_script(&bytes);
            let _ = ember_proto::records::decode_write(&bytes);
            let _ = ember_proto::records::decode_leader(&bytes);
            let _ = ember_proto::records::decode_executor(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn logical_plans_off_the_wire_never_panic() {
    let ctx = SessionContext::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let plan = rt
        .block_on(async {
            ctx.sql("SELECT 1 + 2 AS a, 'x' AS b WHERE 3 > 2")
                .await
                .unwrap()
                .into_optimized_plan()
        })
        .unwrap();
    let valid = datafusion_proto::bytes::logical_plan_to_bytes(&plan)
        .unwrap()
        .to_vec();
    let task_ctx = ctx.task_ctx();
    let limits = ember_scheduler::limits::PlanLimits::default();
    runner()
        .run(&mutations(valid), |bytes| {
            if let Ok(plan) = datafusion_proto::bytes::logical_plan_from_bytes(&bytes, &task_ctx) {
                let _ = ember_scheduler::limits::check_logical_plan(&plan, &limits);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn flight_sql_commands_never_panic() {
    use arrow_flight::sql::{Any, Command, CommandStatementQuery, ProstMessageExt};
    use prost::Message;
    let valid = CommandStatementQuery {
        query: "SELECT 1".into(),
        transaction_id: None,
    }
    .as_any()
    .encode_to_vec();
    runner()
        .run(&mutations(valid), |bytes| {
            if let Ok(any) = Any::decode(bytes.as_slice()) {
                let _ = Command::try_from(any);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn config_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ember.toml");
    let lines = prop_oneof![
        Just("slots = 4".to_string()),
        Just("slots = \"four\"".to_string()),
        Just("slots = -1".to_string()),
        Just("bind = \"127.0.0.1:0\"".to_string()),
        Just("bind = 7".to_string()),
        Just("log-format = \"xml\"".to_string()),
        Just("[executor]".to_string()),
        Just("[scheduler]".to_string()),
        Just("[nope]".to_string()),
        Just("memory-limit-mb = 1.5".to_string()),
        Just("etcd = [\"a\", 1]".to_string()),
        Just("x = { y = 1 }".to_string()),
        "[a-z-]{1,12} = \"[ -~]{0,12}\"",
        "[ -~]{0,40}",
    ];
    let commands = prop_oneof![
        Just(vec!["executor"]),
        Just(vec!["scheduler"]),
        Just(vec!["jobs", "list"]),
        Just(vec!["sql"]),
    ];
    runner()
        .run(
            &(proptest::collection::vec(lines, 0..8), commands),
            |(lines, command)| {
                std::fs::write(&path, lines.join("\n")).unwrap();
                let mut args: Vec<std::ffi::OsString> = vec!["ember".into()];
                args.extend(command.iter().map(Into::into));
                args.push("--config".into());
                args.push(path.clone().into());
                let _ = ember::config_file::try_parse(args);
                Ok(())
            },
        )
        .unwrap();
}
