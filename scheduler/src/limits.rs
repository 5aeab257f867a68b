//! Limits on what one statement may ask of the scheduler, checked before DataFusion plans it.
//!
//! A statement is a tree, and most of the code that walks trees (DataFusion's analyzers and
//! optimizers, `Drop`, `Clone`, protobuf encoding) recurses: a deep enough tree overflows a
//! thread's stack, and a stack overflow aborts the whole process — every job with it, and, if
//! the client retries, each new leader in turn. So the depth of expressions and the size of a
//! plan are bounded here, by walks that stop as soon as a limit is passed (their own
//! recursion never goes deeper than the limit), and planning runs on threads with a stack
//! large enough for anything within the limits (`runtime::isolate`).
//!
//! Pure: plain values in, a verdict out.

use std::ops::ControlFlow;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion, TreeNodeVisitor};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::sql::parser::{CopyToSource, Statement};
use datafusion::sql::sqlparser::ast::{self, SetExpr, Visit, Visitor};
use ember_core::EmberError;

/// How deep and how large one statement or plan may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct PlanLimits {
    /// Deepest nesting of expressions and subqueries in one statement (`a + b + c` nests 2
    /// deep; each operator adds a level). Deeper statements are refused before planning.
    #[arg(
        long,
        env = "EMBER_MAX_EXPRESSION_DEPTH",
        default_value_t = PlanLimits::DEFAULT.max_expression_depth
    )]
    pub max_expression_depth: usize,

    /// Most nodes (expressions, selects, tables, plan operators) in one statement or plan.
    #[arg(
        long,
        env = "EMBER_MAX_PLAN_NODES",
        default_value_t = PlanLimits::DEFAULT.max_plan_nodes
    )]
    pub max_plan_nodes: usize,
}

impl PlanLimits {
    pub const DEFAULT: PlanLimits = PlanLimits {
        max_expression_depth: 400,
        max_plan_nodes: 200_000,
    };
}

impl Default for PlanLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Refuses a parsed SQL statement deeper or larger than `limits` allow.
pub fn check_statement(statement: &Statement, limits: &PlanLimits) -> Result<(), EmberError> {
    let mut walk = Walk::new(limits);
    let flow = match statement {
        Statement::Statement(s) => s.visit(&mut walk),
        Statement::Explain(e) => return check_statement(&e.statement, limits),
        Statement::CopyTo(c) => match &c.source {
            CopyToSource::Query(q) => q.visit(&mut walk),
            CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        Statement::CreateExternalTable(_) | Statement::Reset(_) => ControlFlow::Continue(()),
    };
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Refuses a logical plan (a DataFrame's, decoded) deeper or larger than `limits` allow.
pub fn check_logical_plan(plan: &LogicalPlan, limits: &PlanLimits) -> Result<(), EmberError> {
    let mut walk = Walk::new(limits);
    let mut result = Ok(());
    // Plans nest operators; each operator's expressions nest on their own.
    let _ = plan.visit_with_subqueries(&mut PlanWalk {
        walk: &mut walk,
        result: &mut result,
    });
    result
}

/// Refuses an encoded DataFrame plan whose expressions would decode deeper than `limits`
/// allow, before it is decoded. The wire format nests at most ~100 messages deep (prost
/// refuses more), but a chain `a + b + c + …` travels as one message listing its operands
/// (`BinaryExprNode { repeated operands = 1; string op = 3 }`) and decodes to a tree as deep
/// as the list is long — which DataFusion then builds and walks at a cost growing with the
/// square of its depth, and which could overflow any stack. The chains are measured on the
/// wire, without decoding (`ember_proto::wire::operand_chain_depth`).
pub fn check_plan_bytes(bytes: &[u8], limits: &PlanLimits) -> Result<(), EmberError> {
    let depth = ember_proto::wire::operand_chain_depth(bytes);
    if depth > limits.max_expression_depth {
        return Err(EmberError::User(format!(
            "the plan nests expressions more than {} levels deep; build it with less nesting, \
             or raise the scheduler's --max-expression-depth",
            limits.max_expression_depth
        )));
    }
    Ok(())
}

/// Depth and node counts, shared by both walks.
struct Walk {
    limits: PlanLimits,
    depth: usize,
    nodes: usize,
}

impl Walk {
    fn new(limits: &PlanLimits) -> Self {
        Self {
            limits: *limits,
            depth: 0,
            nodes: 0,
        }
    }

    fn enter(&mut self) -> ControlFlow<EmberError> {
        self.depth += 1;
        self.count(1)?;
        if self.depth > self.limits.max_expression_depth {
            return ControlFlow::Break(EmberError::User(format!(
                "the statement nests expressions more than {} levels deep; write it with \
                 less nesting (an IN list instead of a chain of ORs, for example), or raise \
                 the scheduler's --max-expression-depth",
                self.limits.max_expression_depth
            )));
        }
        ControlFlow::Continue(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn count(&mut self, nodes: usize) -> ControlFlow<EmberError> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > self.limits.max_plan_nodes {
            return ControlFlow::Break(EmberError::User(format!(
                "the statement has more than {} expressions, tables and operators; split it \
                 into smaller statements, or raise the scheduler's --max-plan-nodes",
                self.limits.max_plan_nodes
            )));
        }
        ControlFlow::Continue(())
    }
}

impl Visitor for Walk {
    type Break = EmberError;

    fn pre_visit_query(&mut self, query: &ast::Query) -> ControlFlow<EmberError> {
        // A chain of set operations (`SELECT .. UNION ALL SELECT ..`) nests without passing a
        // hook of the visitor, and DataFusion plans it by recursion: measure it here, without
        // recursion, before the visitor descends; its depth counts like an expression's.
        let (count, depth) = set_operations(&query.body);
        self.count(count)?;
        self.depth += depth;
        self.enter()?;
        self.depth -= depth;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &ast::Query) -> ControlFlow<EmberError> {
        self.leave();
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, _: &ast::Expr) -> ControlFlow<EmberError> {
        self.enter()
    }

    fn post_visit_expr(&mut self, _: &ast::Expr) -> ControlFlow<EmberError> {
        self.leave();
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, _: &ast::TableFactor) -> ControlFlow<EmberError> {
        self.count(1)
    }
}

/// Set operations in one query body and how deep they nest, measured with a stack of our own
/// (no recursion); nested queries are not entered (the visitor measures them when it gets
/// there).
fn set_operations(body: &SetExpr) -> (usize, usize) {
    let (mut count, mut deepest) = (0usize, 0usize);
    let mut pending = vec![(body, 0usize)];
    while let Some((next, depth)) = pending.pop() {
        if let SetExpr::SetOperation { left, right, .. } = next {
            count += 1;
            deepest = deepest.max(depth + 1);
            pending.push((left, depth + 1));
            pending.push((right, depth + 1));
        }
    }
    (count, deepest)
}

struct PlanWalk<'a> {
    walk: &'a mut Walk,
    result: &'a mut Result<(), EmberError>,
}

impl PlanWalk<'_> {
    fn stop(&mut self, error: EmberError) -> TreeNodeRecursion {
        *self.result = Err(error);
        TreeNodeRecursion::Stop
    }
}

impl<'n> TreeNodeVisitor<'n> for PlanWalk<'_> {
    type Node = LogicalPlan;

    fn f_down(&mut self, plan: &'n LogicalPlan) -> datafusion::common::Result<TreeNodeRecursion> {
        if let ControlFlow::Break(e) = self.walk.enter() {
            return Ok(self.stop(e));
        }
        // The plan's own expressions, walked in place (copying a deep one would recurse).
        let mut error = None;
        let _ = plan.apply_expressions(|expr| {
            let mut exprs = ExprWalk {
                walk: self.walk,
                error: None,
            };
            let _ = expr.visit(&mut exprs);
            error = exprs.error;
            Ok(match error {
                Some(_) => TreeNodeRecursion::Stop,
                None => TreeNodeRecursion::Continue,
            })
        });
        match error {
            Some(e) => Ok(self.stop(e)),
            None => Ok(TreeNodeRecursion::Continue),
        }
    }

    fn f_up(&mut self, _: &'n LogicalPlan) -> datafusion::common::Result<TreeNodeRecursion> {
        self.walk.leave();
        Ok(TreeNodeRecursion::Continue)
    }
}

struct ExprWalk<'a> {
    walk: &'a mut Walk,
    error: Option<EmberError>,
}

impl<'n> TreeNodeVisitor<'n> for ExprWalk<'_> {
    type Node = Expr;

    fn f_down(&mut self, _: &'n Expr) -> datafusion::common::Result<TreeNodeRecursion> {
        if let ControlFlow::Break(e) = self.walk.enter() {
            self.error = Some(e);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn f_up(&mut self, _: &'n Expr) -> datafusion::common::Result<TreeNodeRecursion> {
        self.walk.leave();
        Ok(TreeNodeRecursion::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn parse(sql: &str) -> Statement {
        DFParser::parse_sql(sql).unwrap().pop_front().unwrap()
    }

    fn sum(terms: usize) -> String {
        format!("SELECT {}", vec!["1"; terms].join(" + "))
    }

    fn limits(depth: usize, nodes: usize) -> PlanLimits {
        PlanLimits {
            max_expression_depth: depth,
            max_plan_nodes: nodes,
        }
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let cases = [
            // (statement, max depth, max nodes, refused because of)
            (sum(10), 100, 1000, None),
            (sum(200), 100, 100_000, Some("levels deep")),
            (sum(200), 1000, 100, Some("more than 100 expressions")),
            (
                "SELECT * FROM (SELECT * FROM (SELECT 1 AS a) x) y".to_string(),
                10,
                100,
                None,
            ),
            (
                vec!["SELECT 1"; 300].join(" UNION ALL "),
                1000,
                100,
                Some("more than 100"),
            ),
            // A long chain of set operations is as deep as it is long.
            (
                vec!["SELECT 1"; 300].join(" UNION ALL "),
                100,
                100_000,
                Some("levels deep"),
            ),
            (vec!["SELECT 1"; 30].join(" UNION ALL "), 100, 1000, None),
            (
                format!("EXPLAIN {}", sum(50)),
                20,
                1000,
                Some("levels deep"),
            ),
            (
                format!("COPY ({}) TO 'x.csv'", sum(50)),
                20,
                1000,
                Some("levels deep"),
            ),
        ];
        for (sql, depth, nodes, refused) in cases {
            let verdict = check_statement(&parse(&sql), &limits(depth, nodes));
            match refused {
                None => assert!(verdict.is_ok(), "{sql}: {verdict:?}"),
                Some(why) => {
                    let message = verdict.expect_err(&sql).to_string();
                    assert!(message.contains(why), "{sql}: {message}");
                }
            }
        }
    }

    #[test]
    fn a_huge_chain_is_refused_without_deep_recursion() {
        // 20,000 terms: walked on this test thread's ordinary stack, the walk stops at the
        // limit, long before the stack would run out.
        let statement = parse(&sum(20_000));
        let error = check_statement(&statement, &PlanLimits::default()).unwrap_err();
        assert!(
            error.to_string().contains("--max-expression-depth"),
            "{error}"
        );
        // The parsed tree itself is deep: hand it to a thread that can drop it.
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || drop(statement))
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn encoded_chains_are_measured_before_decoding() {
        use datafusion::logical_expr::{LogicalPlanBuilder, lit};
        let encoded = |terms: usize| {
            let expr = (1..terms).fold(lit(1), |acc, _| acc + lit(1));
            let plan = LogicalPlanBuilder::empty(true)
                .project(vec![expr.alias("s")])
                .unwrap()
                .build()
                .unwrap();
            datafusion_proto::bytes::logical_plan_to_bytes(&plan).unwrap()
        };
        let limits = limits(100, 1000);
        assert!(check_plan_bytes(&encoded(50), &limits).is_ok());
        let error = check_plan_bytes(&encoded(300), &limits).unwrap_err();
        assert!(
            error.to_string().contains("--max-expression-depth"),
            "{error}"
        );
        // Not a message at all: nothing to measure (decoding refuses it).
        assert!(check_plan_bytes(&[0xff, 0xff, 0xff], &limits).is_ok());
    }

    #[test]
    fn logical_plans_are_bounded_too() {
        use datafusion::logical_expr::{LogicalPlanBuilder, col, lit};
        let plan = |terms: usize| {
            let expr = (1..terms).fold(lit(1), |acc, _| acc + lit(1));
            LogicalPlanBuilder::empty(true)
                .project(vec![expr.alias("s")])
                .unwrap()
                .filter(col("s").gt(lit(0)))
                .unwrap()
                .build()
                .unwrap()
        };
        assert!(check_logical_plan(&plan(10), &limits(50, 1000)).is_ok());
        let error = check_logical_plan(&plan(100), &limits(50, 1000)).unwrap_err();
        assert!(error.to_string().contains("levels deep"), "{error}");
        let error = check_logical_plan(&plan(40), &limits(50, 20)).unwrap_err();
        assert!(error.to_string().contains("more than 20"), "{error}");
    }
}
