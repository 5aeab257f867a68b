//! Spark Connect expressions as DataFusion expressions over an input's schema: columns
//! (resolved as Spark does: by name, case-insensitively, or through the DataFrame they were
//! taken from), literals, functions, casts, `CASE`, windows, sort orders.

use std::sync::Arc;

use datafusion::common::{Column, DFSchema, TableReference};
use datafusion::logical_expr::expr::{Sort, WindowFunction};
use datafusion::logical_expr::{
    Expr, ExprSchemable, WindowFrame, WindowFrameBound, WindowFrameUnits, cast, lit, try_cast,
};
use datafusion::prelude::get_field;
use ember_core::{EmberError, Result};
use ember_proto::spark::Expression;
use ember_proto::spark::expression::cast::{CastToType, EvalMode};
use ember_proto::spark::expression::sort_order::{NullOrdering, SortDirection};
use ember_proto::spark::expression::window::window_frame::{
    FrameBoundary, FrameType, frame_boundary::Boundary,
};
use ember_proto::spark::expression::{self as ex, ExprType};

use super::plan::Planner;
use super::{functions, names, types, unsupported};

/// `a.b`, `` `a.b`.c `` → its parts, with backquotes removed.
pub fn identifier_parts(identifier: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = identifier.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' if quoted && chars.peek() == Some(&'`') => {
                chars.next();
                current.push('`');
            }
            '`' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

impl Planner {
    /// An expression over `schema`.
    pub(super) fn expr(&self, e: &Expression, schema: &DFSchema) -> Result<Expr> {
        let Some(kind) = &e.expr_type else {
            return Err(EmberError::User("an expression without its kind".into()));
        };
        match kind {
            ExprType::Literal(l) => Ok(lit(types::scalar(l)?)),
            ExprType::UnresolvedAttribute(a) => {
                if a.is_metadata_column == Some(true) {
                    return Err(unsupported("metadata column", &a.unparsed_identifier));
                }
                self.column(&a.unparsed_identifier, a.plan_id, schema)
            }
            ExprType::UnresolvedFunction(f) => {
                self.function(&f.function_name, &f.arguments, f.is_distinct, schema)
            }
            ExprType::CallFunction(f) => {
                self.function(&f.function_name, &f.arguments, false, schema)
            }
            ExprType::ExpressionString(s) => Ok(self.ctx.parse_sql_expr(&s.expression, schema)?),
            ExprType::Alias(a) => {
                let inner = self.expr(required(&a.expr, "alias")?, schema)?;
                match a.name.as_slice() {
                    [name] => Ok(inner.alias(name)),
                    _ => Err(unsupported("alias of several names", &a.name.join(", "))),
                }
            }
            ExprType::Cast(c) => {
                let inner = self.expr(required(&c.expr, "cast")?, schema)?;
                let to = match &c.cast_to_type {
                    Some(CastToType::Type(t)) => types::arrow_type(t)?,
                    Some(CastToType::TypeStr(s)) => types::parse_type(s)?,
                    None => return Err(EmberError::User("a cast without a type".into())),
                };
                Ok(if c.eval_mode() == EvalMode::Try {
                    try_cast(inner, to)
                } else {
                    cast(inner, to)
                })
            }
            ExprType::UnresolvedExtractValue(v) => {
                let child = self.expr(required(&v.child, "extraction")?, schema)?;
                let key = self.expr(required(&v.extraction, "extraction")?, schema)?;
                self.extract(child, key, schema)
            }
            ExprType::Window(w) => self.window(w, schema),
            ExprType::UnresolvedStar(_) => Err(EmberError::User(
                "`*` stands for all columns only in select() and count(*)".into(),
            )),
            ExprType::SortOrder(_) => Err(EmberError::User(
                "a sort order (asc/desc) belongs in orderBy or a window's orderBy".into(),
            )),
            ExprType::UnresolvedRegex(r) => Err(unsupported("column regex", &r.col_name)),
            ExprType::LambdaFunction(_) | ExprType::UnresolvedNamedLambdaVariable(_) => {
                Err(unsupported("expression", "lambda function"))
            }
            ExprType::CommonInlineUserDefinedFunction(f) => {
                Err(unsupported("user-defined function", &f.function_name))
            }
            ExprType::SubqueryExpression(_) => Err(unsupported("expression", "subquery")),
            other => Err(unsupported("expression", variant_name(other))),
        }
    }

    /// A column by name (`a`, `t.a`, `s.field`), through the DataFrame it was taken from when
    /// the client says which (`df["a"]`).
    pub(super) fn column(
        &self,
        identifier: &str,
        plan_id: Option<i64>,
        schema: &DFSchema,
    ) -> Result<Expr> {
        let parts = identifier_parts(identifier);
        if parts.len() == 1 && parts[0] == "*" {
            return Err(EmberError::User("`*` is not a column".into()));
        }
        if let Some(id) = plan_id {
            // The column of that DataFrame, as it is named in this input.
            let known = self.current_columns(id);
            let named: Vec<&Column> = known
                .iter()
                .filter(|c| c.name == parts[0])
                .chain(
                    known
                        .iter()
                        .filter(|c| c.name.eq_ignore_ascii_case(&parts[0])),
                )
                .collect();
            if let Some(column) = named.into_iter().find(|c| schema.has_column(c)) {
                return Ok(nested(Expr::Column(column.clone()), &parts[1..]));
            }
        }
        // `t.a`: the column `a` of the table or alias `t`.
        if parts.len() >= 2
            && let Some((qualifier, field)) = find(schema, &parts[1..2], Some(&parts[0]))
        {
            let column = Column::new(qualifier.cloned(), field.name());
            return Ok(nested(Expr::Column(column), &parts[2..]));
        }
        match matching(schema, &parts[0], None).as_slice() {
            [(qualifier, field)] => {
                let column = Column::new(qualifier.cloned(), field.name());
                Ok(nested(Expr::Column(column), &parts[1..]))
            }
            [] => Err(EmberError::User(format!(
                "[UNRESOLVED_COLUMN] a column named `{identifier}` cannot be resolved; the \
                 input has: {}",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            several => Err(EmberError::User(format!(
                "[AMBIGUOUS_REFERENCE] `{identifier}` is ambiguous: it could be {}",
                several
                    .iter()
                    .map(|(q, f)| match q {
                        Some(q) => format!("{q}.{}", f.name()),
                        None => f.name().clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn function(
        &self,
        name: &str,
        arguments: &[Expression],
        distinct: bool,
        schema: &DFSchema,
    ) -> Result<Expr> {
        let star = |e: &Expression| matches!(e.expr_type, Some(ExprType::UnresolvedStar(_)));
        let args = if name.eq_ignore_ascii_case("count") && arguments.iter().any(star) {
            vec![lit(1i64)]
        } else {
            arguments
                .iter()
                .map(|a| self.expr(a, schema))
                .collect::<Result<Vec<_>>>()?
        };
        functions::call(&self.ctx.state(), name, args, distinct, schema)
    }

    /// `col[key]`: a struct's field by name, an array's element (from 0, as Spark counts) or
    /// a map's value.
    fn extract(&self, child: Expr, key: Expr, schema: &DFSchema) -> Result<Expr> {
        use datafusion::arrow::datatypes::DataType;
        let child_type = child.get_type(schema)?;
        match (&child_type, &key) {
            (DataType::Struct(_), Expr::Literal(value, _)) => {
                Ok(get_field(child, value.to_string()))
            }
            (DataType::List(_) | DataType::LargeList(_), _) => Ok(
                datafusion::functions_nested::expr_fn::array_element(child, key + lit(1i64)),
            ),
            (DataType::Map(_, _), _) => Ok(datafusion::functions_nested::expr_fn::array_element(
                datafusion::functions_nested::expr_fn::map_extract(child, key),
                lit(1i64),
            )),
            _ => Err(EmberError::User(format!(
                "cannot take an item of a value of type {child_type}"
            ))),
        }
    }

    /// A sort order (`col.asc()`, `desc_nulls_last()`); Spark puts nulls first ascending and
    /// last descending unless told.
    pub(super) fn sort(&self, order: &ex::SortOrder, schema: &DFSchema) -> Result<Sort> {
        let child = self.expr(required(&order.child, "sort order")?, schema)?;
        let asc = order.direction() != SortDirection::Descending;
        let nulls_first = match order.null_ordering() {
            NullOrdering::SortNullsFirst => true,
            NullOrdering::SortNullsLast => false,
            NullOrdering::SortNullsUnspecified => asc,
        };
        Ok(child.sort(asc, nulls_first))
    }

    fn window(&self, w: &ex::Window, schema: &DFSchema) -> Result<Expr> {
        let function = self.expr(required(&w.window_function, "window")?, schema)?;
        let mut window = match function {
            Expr::AggregateFunction(agg) => {
                let mut window = WindowFunction::new(
                    datafusion::logical_expr::expr::WindowFunctionDefinition::AggregateUDF(
                        agg.func,
                    ),
                    agg.params.args,
                );
                window.params.distinct = agg.params.distinct;
                window
            }
            Expr::WindowFunction(window) => *window,
            other => {
                return Err(EmberError::User(format!(
                    "{} is not a window or aggregate function",
                    other.schema_name()
                )));
            }
        };
        window.params.partition_by = w
            .partition_spec
            .iter()
            .map(|e| self.expr(e, schema))
            .collect::<Result<_>>()?;
        window.params.order_by = w
            .order_spec
            .iter()
            .map(|o| self.sort(o, schema))
            .collect::<Result<_>>()?;
        let ordered = !window.params.order_by.is_empty();
        window.params.window_frame = match &w.frame_spec {
            Some(frame) => self.frame(frame, schema)?,
            None => WindowFrame::new(ordered.then_some(false)),
        };
        Ok(Expr::WindowFunction(Box::new(window)))
    }

    fn frame(&self, frame: &ex::window::WindowFrame, schema: &DFSchema) -> Result<WindowFrame> {
        let units = match frame.frame_type() {
            FrameType::Row => WindowFrameUnits::Rows,
            FrameType::Range => WindowFrameUnits::Range,
            FrameType::Undefined => {
                return Err(EmberError::User("a window frame without its type".into()));
            }
        };
        let bound = |b: Option<&FrameBoundary>, lower: bool| -> Result<WindowFrameBound> {
            let unbounded = if lower {
                WindowFrameBound::Preceding(datafusion::common::ScalarValue::Null)
            } else {
                WindowFrameBound::Following(datafusion::common::ScalarValue::Null)
            };
            Ok(match b.and_then(|b| b.boundary.as_ref()) {
                None | Some(Boundary::Unbounded(_)) => unbounded,
                Some(Boundary::CurrentRow(_)) => WindowFrameBound::CurrentRow,
                Some(Boundary::Value(v)) => {
                    let value = match self.expr(v, schema)? {
                        Expr::Literal(value, _) => value,
                        other => {
                            return Err(EmberError::User(format!(
                                "a window frame's bound must be a literal, not {other}"
                            )));
                        }
                    };
                    let as_i64 = value
                        .clone()
                        .cast_to(&datafusion::arrow::datatypes::DataType::Int64)?;
                    match as_i64 {
                        datafusion::common::ScalarValue::Int64(Some(0)) => {
                            WindowFrameBound::CurrentRow
                        }
                        datafusion::common::ScalarValue::Int64(Some(n)) if n < 0 => {
                            WindowFrameBound::Preceding(datafusion::common::ScalarValue::UInt64(
                                Some(n.unsigned_abs()),
                            ))
                        }
                        datafusion::common::ScalarValue::Int64(Some(n)) => {
                            WindowFrameBound::Following(datafusion::common::ScalarValue::UInt64(
                                Some(n as u64),
                            ))
                        }
                        _ => unbounded,
                    }
                }
            })
        };
        Ok(WindowFrame::new_bounds(
            units,
            bound(frame.lower.as_deref(), true)?,
            bound(frame.upper.as_deref(), false)?,
        ))
    }

    /// Each expression of a projection, named as Spark names it; `*` and `t.*` expand.
    pub(super) fn projection(&self, exprs: &[Expression], schema: &DFSchema) -> Result<Vec<Expr>> {
        let mut out = Vec::new();
        for e in exprs {
            match &e.expr_type {
                Some(ExprType::UnresolvedStar(star)) => {
                    let target = star.unparsed_target.as_deref().map(|t| {
                        let mut parts = identifier_parts(t.trim_end_matches(".*"));
                        parts.retain(|p| p != "*");
                        parts.join(".")
                    });
                    let before = out.len();
                    for (qualifier, field) in schema.iter() {
                        let wanted = match (&target, qualifier) {
                            (None, _) => true,
                            (Some(t), Some(q)) => q.table().eq_ignore_ascii_case(t),
                            (Some(_), None) => false,
                        };
                        if wanted {
                            out.push(Expr::Column(Column::new(qualifier.cloned(), field.name())));
                        }
                    }
                    if out.len() == before
                        && let Some(t) = target
                    {
                        return Err(EmberError::User(format!(
                            "[CANNOT_RESOLVE_STAR_EXPAND] `{t}.*`: no table or alias `{t}`"
                        )));
                    }
                }
                _ => out.push(self.named(e, schema)?),
            }
        }
        Ok(out)
    }

    /// An expression under Spark's name for it (columns keep theirs).
    pub(super) fn named(&self, e: &Expression, schema: &DFSchema) -> Result<Expr> {
        let expr = self.expr(e, schema)?;
        Ok(match expr {
            Expr::Column(_) | Expr::Alias(_) => expr,
            other => other.alias(names::name(e)),
        })
    }
}

/// Fields of `schema` named `name` (exactly, or else ignoring case), of table `table` if given.
pub(super) fn matching<'a>(
    schema: &'a DFSchema,
    name: &str,
    table: Option<&str>,
) -> Vec<(
    Option<&'a TableReference>,
    &'a Arc<datafusion::arrow::datatypes::Field>,
)> {
    let of_table = |q: Option<&TableReference>| match (table, q) {
        (None, _) => true,
        (Some(t), Some(q)) => q.table().eq_ignore_ascii_case(t) || q.to_string() == t,
        (Some(_), None) => false,
    };
    let exact: Vec<_> = schema
        .iter()
        .filter(|(q, f)| f.name() == name && of_table(*q))
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    schema
        .iter()
        .filter(|(q, f)| f.name().eq_ignore_ascii_case(name) && of_table(*q))
        .collect()
}

fn find<'a>(
    schema: &'a DFSchema,
    parts: &[String],
    table: Option<&String>,
) -> Option<(
    Option<&'a TableReference>,
    &'a Arc<datafusion::arrow::datatypes::Field>,
)> {
    let name = parts.first()?;
    match matching(schema, name, table.map(String::as_str)).as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// `s.a.b` on a struct column `s`.
fn nested(mut expr: Expr, fields: &[String]) -> Expr {
    for field in fields {
        expr = get_field(expr, field.as_str());
    }
    expr
}

pub(super) fn required<'a, E: std::borrow::Borrow<Expression>>(
    e: &'a Option<E>,
    within: &str,
) -> Result<&'a Expression> {
    e.as_ref()
        .map(|e| e.borrow())
        .ok_or_else(|| EmberError::User(format!("{within}: an expression is missing")))
}

fn variant_name(kind: &ExprType) -> &'static str {
    match kind {
        ExprType::UpdateFields(_) => "withField/dropFields",
        ExprType::NamedArgumentExpression(_) => "named argument",
        ExprType::MergeAction(_) => "merge action",
        ExprType::TypedAggregateExpression(_) => "typed aggregate",
        ExprType::DirectShufflePartitionId(_) => "direct shuffle partition id",
        ExprType::Extension(_) => "extension",
        _ => "expression",
    }
}
