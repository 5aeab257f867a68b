//! The web UI: server-rendered HTML pages, no build step and no script beyond a reload while
//! work runs. Each page renders the same JSON values the REST API serves (`rest.rs`), so the
//! two cannot disagree.

use std::fmt::Write;

use ember_core::task_metrics::{format_bytes, format_nanos};
use serde_json::Value;

const STYLE: &str = "\
*{box-sizing:border-box}body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#23262f;color:#fff;padding:.6em 1em;display:flex;gap:1.2em;align-items:center;flex-wrap:wrap}\
header a{color:#ffb35c;text-decoration:none;font-weight:600}header .brand{color:#ff7a1a;font-size:1.2em}\
main{padding:1em;max-width:1200px;margin:auto}h1{font-size:1.3em;margin:.2em 0 .6em;word-break:break-all}\
h2{font-size:1.1em;margin:1.2em 0 .4em}.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:.35em .6em;border-bottom:1px solid #e3e5ea;text-align:left;vertical-align:top}\
th{background:#eceef2;font-weight:600;white-space:nowrap}td.num{text-align:right;white-space:nowrap}\
pre{background:#fff;border:1px solid #e3e5ea;padding:.7em;overflow-x:auto;font-size:12px}\
pre.wrap{white-space:pre-wrap;word-break:break-word}pre.error{border-color:#d9534f;background:#fff3f2;color:#8a1f1b;white-space:pre-wrap}\
.state{display:inline-block;padding:0 .5em;border-radius:.7em;font-size:.85em;color:#fff;background:#888}\
.running{background:#1f77d0}.succeeded,.completed{background:#2e9d57}.failed{background:#d9534f}.cancelled{background:#8a8f99}\
.queued,.waiting,.pending{background:#b8860b}\
.bar{background:#e3e5ea;border-radius:3px;height:.8em;min-width:80px;overflow:hidden}.bar span{display:block;height:100%;background:#2e9d57}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;background:#fff;padding:.7em;border:1px solid #e3e5ea}\
dt{color:#5b6170}dd{margin:0;word-break:break-all}svg a:hover rect{stroke-width:3}\
.dist{display:flex;align-items:flex-end;gap:2px;height:60px;background:#fff;border:1px solid #e3e5ea;padding:4px}\
.dist span{flex:1;background:#1f77d0;min-height:1px}\
@media (max-width:600px){main{padding:.5em}.wide{display:none}}";

pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page; `live` reloads it every two seconds (while something it shows runs).
fn page(title: &str, body: &str, live: bool) -> String {
    let reload = if live {
        "<script>setTimeout(function(){location.reload()},2000)</script>"
    } else {
        ""
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · Ember</title><style>{STYLE}</style>{reload}</head><body>\
         <header><span class=\"brand\">Ember</span><a href=\"/ui\">Jobs</a>\
         <a href=\"/ui/executors\">Executors</a></header><main>{body}</main></body></html>",
        esc(title)
    )
}

pub fn error_page(status: u16, message: &str) -> String {
    page(
        "Error",
        &format!(
            "<h1>Error {status}</h1><pre class=\"error\" id=\"error\">{}</pre>",
            esc(message)
        ),
        false,
    )
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn ms(v: u64) -> String {
    if v < 1_000 {
        format!("{v} ms")
    } else {
        format!("{:.2} s", v as f64 / 1e3)
    }
}

fn state(state: &str) -> String {
    format!("<span class=\"state {0}\">{0}</span>", esc(state))
}

fn bar(done: u64, total: u64) -> String {
    let pct = (done * 100).checked_div(total).unwrap_or(0);
    format!(
        "<div class=\"bar\" title=\"{done}/{total}\"><span style=\"width:{pct}%\"></span></div>"
    )
}

fn is_live(state: &str) -> bool {
    matches!(state, "queued" | "running")
}

pub fn jobs_page(jobs: &[Value], cluster: &Value) -> String {
    let mut rows = String::new();
    for j in jobs {
        let id = s(j, "id");
        let _ = write!(
            rows,
            "<tr data-state=\"{st}\"><td><a class=\"job\" href=\"/ui/jobs/{eid}\">{name}</a><br><small>{eid}</small></td>\
             <td>{state}</td><td>{bar}<small>{td}/{tt} tasks</small></td><td class=\"num\">{elapsed}</td>\
             <td class=\"wide\">{owner}</td><td class=\"wide\">{error}</td></tr>",
            st = esc(s(j, "state")),
            eid = esc(id),
            name = esc(&short(s(j, "name"), 90)),
            state = state(s(j, "state")),
            bar = bar(n(j, "tasks_completed"), n(j, "tasks_total")),
            td = n(j, "tasks_completed"),
            tt = n(j, "tasks_total"),
            elapsed = ms(n(j, "elapsed_ms")),
            owner = esc(j["owner"].as_str().unwrap_or("")),
            error = esc(&short(j["error"].as_str().unwrap_or(""), 120)),
        );
    }
    if jobs.is_empty() {
        rows.push_str("<tr><td colspan=\"6\">No jobs yet.</td></tr>");
    }
    let live = jobs.iter().any(|j| is_live(s(j, "state")));
    let body = format!(
        "<h1>Jobs</h1><p>{} executors, {} of {} task slots free, {} running jobs · scheduler {} ({})</p>\
         <div class=\"scroll\"><table id=\"jobs\"><thead><tr><th>Job</th><th>State</th><th>Progress</th>\
         <th>Time</th><th class=\"wide\">Owner</th><th class=\"wide\">Error</th></tr></thead>\
         <tbody>{rows}</tbody></table></div>",
        n(cluster, "executors"),
        n(cluster, "free_slots"),
        n(cluster, "total_slots"),
        n(cluster, "running_jobs"),
        esc(s(cluster, "version")),
        esc(s(cluster, "role")),
    );
    page("Jobs", &body, live)
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    text.chars().take(max).collect::<String>() + "…"
}

/// Stages as boxes in columns by depth (a stage right of the stages it reads), with arrows.
fn stage_graph(job: &str, stages: &[Value]) -> String {
    let mut depth: Vec<(u64, usize)> = Vec::new();
    for st in stages {
        let d = st["inputs"]
            .as_array()
            .map(|inputs| {
                inputs
                    .iter()
                    .filter_map(|i| depth.iter().find(|(id, _)| Some(*id) == i.as_u64()))
                    .map(|(_, d)| d + 1)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        depth.push((n(st, "id"), d));
    }
    let (w, h, gap_x, gap_y) = (150, 58, 50, 16);
    let mut row_of = std::collections::HashMap::new();
    let mut rows_in: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for (id, d) in &depth {
        let r = rows_in.entry(*d).or_default();
        row_of.insert(*id, (*d, *r));
        *r += 1;
    }
    let pos = |id: u64| {
        let (d, r) = row_of[&id];
        (10 + d * (w + gap_x), 10 + r * (h + gap_y))
    };
    let width = 20 + (depth.iter().map(|d| d.1).max().unwrap_or(0) + 1) * (w + gap_x);
    let height = 20 + rows_in.values().max().copied().unwrap_or(1) * (h + gap_y);
    let mut svg = format!(
        "<div class=\"scroll\"><svg id=\"stage-graph\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"stages\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" \
         markerHeight=\"6\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#5b6170\"/></marker></defs>"
    );
    for st in stages {
        let (x, y) = pos(n(st, "id"));
        for input in st["inputs"].as_array().into_iter().flatten() {
            if let Some(i) = input.as_u64().filter(|i| row_of.contains_key(i)) {
                let (ix, iy) = pos(i);
                let _ = write!(
                    svg,
                    "<line x1=\"{}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#5b6170\" marker-end=\"url(#arrow)\"/>",
                    ix + w,
                    iy + h / 2,
                    y + h / 2
                );
            }
        }
    }
    for st in stages {
        let id = n(st, "id");
        let (x, y) = pos(id);
        let color = match s(st, "state") {
            "completed" => "#2e9d57",
            "running" => "#1f77d0",
            "failed" => "#d9534f",
            "cancelled" => "#8a8f99",
            _ => "#b8860b",
        };
        let _ = write!(
            svg,
            "<a href=\"/ui/jobs/{job}/stages/{id}\"><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"6\" \
             fill=\"#fff\" stroke=\"{color}\" stroke-width=\"2\"/>\
             <text x=\"{}\" y=\"{}\" font-weight=\"600\">Stage {id}{}</text>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\">{}/{} tasks · {}</text></a>",
            x + 10,
            y + 22,
            if st["final"].as_bool() == Some(true) {
                " (final)"
            } else {
                ""
            },
            x + 10,
            y + 42,
            n(st, "tasks_completed"),
            n(st, "tasks_total"),
            esc(s(st, "state")),
        );
    }
    svg.push_str("</svg></div>");
    svg
}

pub fn job_page(job: &Value) -> String {
    let id = esc(s(job, "id"));
    let r = &job["resources"];
    let mut body = format!(
        "<h1>Job {id}</h1><dl><dt>State</dt><dd id=\"state\">{}</dd><dt>Owner</dt><dd>{}</dd>\
         <dt>Statements</dt><dd>{}/{}</dd><dt>Stages</dt><dd>{}/{}</dd><dt>Tasks</dt><dd>{}/{}</dd>\
         <dt>Wall time</dt><dd>{}</dd><dt>CPU time</dt><dd>{}</dd><dt>Peak task memory</dt><dd>{}</dd>\
         <dt>Rows scanned</dt><dd>{}</dd><dt>Bytes scanned</dt><dd>{}</dd><dt>Shuffled</dt><dd>{}</dd>\
         <dt>Spilled</dt><dd>{}</dd></dl>",
        state(s(job, "state")),
        esc(job["owner"].as_str().unwrap_or("")),
        n(job, "statements_done"),
        n(job, "statements_total"),
        n(job, "stages_completed"),
        n(job, "stages_total"),
        n(job, "tasks_completed"),
        n(job, "tasks_total"),
        ms(n(job, "elapsed_ms")),
        format_nanos(n(r, "cpu_ns")),
        format_bytes(n(r, "peak_task_memory_bytes")),
        n(r, "rows_scanned"),
        format_bytes(n(r, "bytes_scanned")),
        format_bytes(n(r, "shuffle_bytes")),
        format_bytes(n(r, "spilled_bytes")),
    );
    if let Some(error) = job["error"].as_str() {
        let _ = write!(
            body,
            "<h2>Error ({})</h2><pre class=\"error\" id=\"error\">{}</pre>",
            esc(job["error_kind"].as_str().unwrap_or("unknown")),
            esc(error)
        );
    }
    match job["statements"].as_array() {
        Some(statements) => {
            body.push_str("<h2>Statements</h2><ol id=\"statements\">");
            let done = n(job, "statements_done") as usize;
            for (i, st) in statements.iter().enumerate() {
                let mark = if i < done { "✓ " } else { "" };
                let _ = write!(
                    body,
                    "<li><pre class=\"wrap\">{mark}{}</pre></li>",
                    esc(st.as_str().unwrap_or(""))
                );
            }
            body.push_str("</ol>");
        }
        None => {
            let _ = write!(
                body,
                "<h2>SQL</h2><pre class=\"wrap\" id=\"sql\">{}</pre>",
                esc(s(job, "name"))
            );
        }
    }
    let running = &job["running_job"];
    match running["stages"].as_array() {
        Some(stages) => {
            // Links name the job as listed (a batch job's id shows its running statement).
            let jid = esc(s(job, "id"));
            let _ = write!(body, "<h2>Stages</h2>{}", stage_graph(&jid, stages));
            body.push_str(
                "<div class=\"scroll\"><table id=\"stages\"><thead><tr><th>Stage</th><th>State</th>\
                 <th>Tasks</th><th>Rows out</th><th>Shuffle read</th><th>Shuffle write</th><th>Scanned</th><th>Spilled</th>\
                 <th>CPU</th><th>Task time min / median / max</th></tr></thead><tbody>",
            );
            for st in stages {
                let m = &st["metrics"];
                let t = &m["task_ms"];
                let _ = write!(
                    body,
                    "<tr><td><a class=\"stage\" href=\"/ui/jobs/{jid}/stages/{sid}\">Stage {sid}</a></td>\
                     <td>{}</td><td>{}{}/{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td><td class=\"num\">{} / {} / {}</td></tr>",
                    state(s(st, "state")),
                    bar(n(st, "tasks_completed"), n(st, "tasks_total")),
                    n(st, "tasks_completed"),
                    n(st, "tasks_total"),
                    n(st, "output_rows"),
                    format_bytes(n(st, "shuffle_read_bytes")),
                    format_bytes(n(st, "output_bytes")),
                    format_bytes(n(m, "bytes_scanned")),
                    format_bytes(n(m, "spilled_bytes")),
                    format_nanos(n(m, "cpu_ns")),
                    ms(n(t, "min")),
                    ms(n(t, "median")),
                    ms(n(t, "max")),
                    sid = n(st, "id"),
                );
            }
            body.push_str("</tbody></table></div>");
            let _ = write!(
                body,
                "<h2>Plan with metrics</h2><pre id=\"plan\">{}</pre>",
                esc(s(running, "plan_with_metrics"))
            );
        }
        None => body.push_str(
            "<p>Its stages are no longer held by the scheduler (the job ended and its \
             details expired); the history keeps the totals above.</p>",
        ),
    }
    page(
        &format!("Job {}", s(job, "id")),
        &body,
        is_live(s(job, "state")),
    )
}

fn find_stage<'a>(job: &'a Value, stage: &str) -> Option<&'a Value> {
    let stage: u64 = stage.parse().ok()?;
    job["running_job"]["stages"]
        .as_array()?
        .iter()
        .find(|st| n(st, "id") == stage)
}

/// Task times as a histogram of ten bars: a tall bar far right is a straggler (skew).
fn distribution(tasks: &[Value]) -> String {
    let times: Vec<u64> = tasks
        .iter()
        .filter_map(|t| t["elapsed_ms"].as_u64())
        .collect();
    let Some(max) = times.iter().max().copied() else {
        return "<p>No task has finished yet.</p>".into();
    };
    let mut buckets = [0u64; 10];
    for t in &times {
        let i = if max == 0 {
            0
        } else {
            ((*t * 10) / (max + 1)) as usize
        };
        buckets[i.min(9)] += 1;
    }
    let top = buckets.iter().max().copied().unwrap_or(1).max(1);
    let bars: String = buckets
        .iter()
        .map(|b| {
            format!(
                "<span style=\"height:{}%\" title=\"{b} tasks\"></span>",
                b * 100 / top
            )
        })
        .collect();
    format!(
        "<div class=\"dist\" id=\"task-times\">{bars}</div><small>task time, 0 to {}</small>",
        ms(max)
    )
}

pub fn stage_page(job: &Value, stage: &str) -> Option<String> {
    let st = find_stage(job, stage)?;
    let jid = esc(s(job, "id"));
    let sid = n(st, "id");
    let tasks = st["tasks"].as_array().cloned().unwrap_or_default();
    let mut body = format!(
        "<h1>Stage {sid} of job <a href=\"/ui/jobs/{}\">{}</a></h1><dl><dt>State</dt><dd>{}</dd>\
         <dt>Reads stages</dt><dd>{}</dd><dt>Tasks</dt><dd>{}/{} ({} launches)</dd>\
         <dt>Rows out</dt><dd>{}</dd><dt>Shuffle write</dt><dd>{}</dd></dl><h2>Task times</h2>{}",
        esc(s(job, "id")),
        esc(s(job, "id")),
        state(s(st, "state")),
        esc(&st["inputs"].to_string()),
        n(st, "tasks_completed"),
        n(st, "tasks_total"),
        n(st, "launches"),
        n(st, "output_rows"),
        format_bytes(n(st, "output_bytes")),
        distribution(&tasks),
    );
    body.push_str(
        "<h2>Tasks</h2><div class=\"scroll\"><table id=\"tasks\"><thead><tr><th>Task</th><th>State</th>\
         <th>Executor</th><th>Attempts</th><th>Time</th><th>CPU</th><th>Peak memory</th><th>Last error</th>\
         </tr></thead><tbody>",
    );
    for t in &tasks {
        let p = n(t, "partition");
        let _ = write!(
            body,
            "<tr><td><a class=\"task\" href=\"/ui/jobs/{jid}/stages/{sid}/tasks/{p}\">{p}</a></td><td>{}</td>\
             <td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            state(s(t, "state")),
            esc(t["executor"].as_str().unwrap_or("")),
            n(t, "attempts"),
            t["elapsed_ms"].as_u64().map(ms).unwrap_or_default(),
            t["cpu_ns"].as_u64().map(format_nanos).unwrap_or_default(),
            t["peak_memory_bytes"]
                .as_u64()
                .map(format_bytes)
                .unwrap_or_default(),
            esc(&short(t["last_error"].as_str().unwrap_or(""), 100)),
        );
    }
    body.push_str("</tbody></table></div>");
    let _ = write!(
        body,
        "<h2>Plan</h2><pre id=\"plan\">{}</pre>",
        esc(s(st, "plan"))
    );
    Some(page(
        &format!("Stage {sid}"),
        &body,
        is_live(s(job, "state")),
    ))
}

pub fn task_page(job: &Value, stage: &str, task: &str) -> Option<String> {
    let st = find_stage(job, stage)?;
    let p: u64 = task.parse().ok()?;
    let t = st["tasks"]
        .as_array()?
        .iter()
        .find(|t| n(t, "partition") == p)?;
    let jid = esc(s(job, "id"));
    let sid = n(st, "id");
    let mut body = format!(
        "<h1>Task {p} of <a href=\"/ui/jobs/{jid}/stages/{sid}\">stage {sid}</a>, job \
         <a href=\"/ui/jobs/{jid}\">{jid}</a></h1><dl><dt>State</dt><dd id=\"state\">{}</dd>\
         <dt>Executor</dt><dd id=\"executor\">{}</dd><dt>Attempt</dt><dd>{}</dd><dt>Attempts launched</dt><dd>{}</dd>\
         <dt>Time</dt><dd>{}</dd><dt>CPU</dt><dd>{}</dd><dt>Peak memory</dt><dd>{}</dd>\
         <dt>Spilled</dt><dd>{}</dd></dl>",
        state(s(t, "state")),
        esc(t["executor"].as_str().unwrap_or("not placed")),
        t["attempt"]
            .as_u64()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        n(t, "attempts"),
        t["elapsed_ms"].as_u64().map(ms).unwrap_or_default(),
        t["cpu_ns"].as_u64().map(format_nanos).unwrap_or_default(),
        t["peak_memory_bytes"]
            .as_u64()
            .map(format_bytes)
            .unwrap_or_default(),
        t["spilled_bytes"]
            .as_u64()
            .map(format_bytes)
            .unwrap_or_default(),
    );
    if let Some(error) = t["last_error"].as_str() {
        let _ = write!(
            body,
            "<h2>Last failure</h2><pre class=\"error\" id=\"error\">{}</pre>",
            esc(error)
        );
    }
    if let Some(ops) = t["operators"].as_array() {
        body.push_str("<h2>Operators</h2><div class=\"scroll\"><table id=\"operators\"><thead><tr><th>Operator</th><th>Metrics</th></tr></thead><tbody>");
        for o in ops {
            let metrics = o["metrics"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{}={}", esc(k), v))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{metrics}</td></tr>",
                esc(s(o, "operator"))
            );
        }
        body.push_str("</tbody></table></div>");
    }
    Some(page(
        &format!("Task {p}"),
        &body,
        s(t, "state") == "running",
    ))
}

pub fn executors_page(executors: &Value) -> String {
    let mut rows = String::new();
    for e in executors.as_array().into_iter().flatten() {
        let m = &e["metrics"];
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}/{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{} / {}</td></tr>",
            esc(s(e, "id")),
            esc(s(e, "address")),
            n(e, "running_tasks"),
            n(e, "slots"),
            n(m, "tasks_completed"),
            n(m, "tasks_failed"),
            format_bytes(n(m, "shuffle_bytes_written")),
            format_bytes(n(m, "bytes_served")),
            format_bytes(n(m, "spilled_bytes")),
            format_bytes(n(m, "memory_reserved_bytes")),
            format_bytes(n(m, "memory_limit_bytes")),
        );
    }
    let body = format!(
        "<h1>Executors</h1><div class=\"scroll\"><table id=\"executors\"><thead><tr><th>Executor</th>\
         <th>Address</th><th>Running / slots</th><th>Tasks done</th><th>Failed</th><th>Shuffle written</th>\
         <th>Served</th><th>Spilled</th><th>Memory reserved / limit</th></tr></thead><tbody>{rows}</tbody></table></div>"
    );
    page("Executors", &body, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_from_users_is_escaped() {
        assert_eq!(esc("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
        let job = json!({"id": "j1", "name": "SELECT '<script>'", "state": "failed",
                         "error": "<oops>", "resources": {}, "running_job": null});
        let html = job_page(&job);
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>'"));
        assert!(html.contains("id=\"error\">&lt;oops&gt;"));
    }
}
