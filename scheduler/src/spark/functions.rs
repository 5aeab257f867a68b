//! Spark's functions and operators by name (as `pyspark.sql.functions` and `Column` send
//! them) as DataFusion expressions with Spark's semantics: `/` divides as doubles, `year(d)`
//! is a date part, `regexp_replace` replaces every match, `dayofweek` counts from Sunday = 1.
//! A name Spark and DataFusion share with the same meaning goes to DataFusion's registry;
//! anything else is refused by name.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::execution::SessionState;
use datafusion::execution::registry::FunctionRegistry;
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction, WindowFunction};
use datafusion::logical_expr::{Expr, ExprSchemable, Operator, binary_expr, cast, lit, when};
use ember_core::{EmberError, Result};

use super::unsupported;

/// Names whose meaning differs from DataFusion's, or which DataFusion spells otherwise.
fn renamed(name: &str) -> Option<&'static str> {
    Some(match name {
        "mean" => "avg",
        "std" | "stddev_samp" => "stddev",
        "variance" => "var_samp",
        "collect_list" => "array_agg",
        "approx_count_distinct" => "approx_distinct",
        "instr" => "strpos",
        "char_length" | "character_length" | "length" => "character_length",
        "ifnull" | "nvl" => "coalesce",
        "pow" => "power",
        "ceiling" => "ceil",
        "sign" => "signum",
        "array_contains" => "array_has",
        "size" | "cardinality" => "cardinality",
        "every" => "bool_and",
        "some" | "any" => "bool_or",
        "isnan" => "isnan",
        "startswith" => "starts_with",
        "endswith" => "ends_with",
        "array" => "make_array",
        "current_timestamp" => "now",
        "lower" | "lcase" => "lower",
        "upper" | "ucase" => "upper",
        "substring" | "substr" => "substr",
        "percentile_approx" | "approx_percentile" => "approx_percentile_cont",
        "sha1" => "sha1",
        _ => return None,
    })
}

/// A call of Spark function `name` on `args` (already translated) over `schema`.
pub fn call(
    state: &SessionState,
    name: &str,
    mut args: Vec<Expr>,
    distinct: bool,
    schema: &DFSchema,
) -> Result<Expr> {
    let lower = name.to_ascii_lowercase();
    if let Some(op) = operator(&lower) {
        return binary(op, args, schema);
    }
    let arity = |n: usize| -> Result<()> {
        if args.len() == n {
            Ok(())
        } else {
            Err(EmberError::User(format!(
                "{name} takes {n} argument(s), not {}",
                args.len()
            )))
        }
    };
    let date_part = |part: &str, args: Vec<Expr>| -> Result<Expr> {
        let [d] = <[Expr; 1]>::try_from(args)
            .map_err(|_| EmberError::User(format!("{name} takes one argument")))?;
        Ok(cast(
            datafusion::functions::expr_fn::date_part(lit(part), d),
            DataType::Int32,
        ))
    };
    Ok(match lower.as_str() {
        "not" => {
            arity(1)?;
            Expr::Not(Box::new(args.remove(0)))
        }
        "negative" => {
            arity(1)?;
            Expr::Negative(Box::new(args.remove(0)))
        }
        "isnull" => {
            arity(1)?;
            args.remove(0).is_null()
        }
        "isnotnull" => {
            arity(1)?;
            args.remove(0).is_not_null()
        }
        "in" => {
            if args.is_empty() {
                return Err(EmberError::User("isin needs a column".into()));
            }
            let value = args.remove(0);
            value.in_list(args, false)
        }
        "like" | "ilike" => {
            arity(2)?;
            let pattern = args.pop().expect("two arguments");
            let value = args.pop().expect("two arguments");
            if lower == "like" {
                value.like(pattern)
            } else {
                value.ilike(pattern)
            }
        }
        "rlike" | "regexp" | "regexp_like" => scalar(state, "regexp_like", args)?,
        "regexp_replace" => {
            // Spark replaces every match.
            arity(3)?;
            args.push(lit("g"));
            scalar(state, "regexp_replace", args)?
        }
        "when" => case_when(args)?,
        "count" if distinct => aggregate(state, "count", args, true)?,
        "count_distinct" | "countdistinct" => aggregate(state, "count", args, true)?,
        "sum_distinct" | "sumdistinct" => aggregate(state, "sum", args, true)?,
        "collect_set" => aggregate(state, "array_agg", args, true)?,
        "year" => date_part("year", args)?,
        "month" => date_part("month", args)?,
        "day" | "dayofmonth" => date_part("day", args)?,
        "hour" => date_part("hour", args)?,
        "minute" => date_part("minute", args)?,
        "second" => date_part("second", args)?,
        "quarter" => date_part("quarter", args)?,
        "dayofyear" => date_part("doy", args)?,
        "weekofyear" => date_part("week", args)?,
        "dayofweek" => date_part("dow", args)? + lit(1i32),
        "date_add" | "date_sub" => {
            arity(2)?;
            let days = cast(args.pop().expect("two arguments"), DataType::Int32);
            let date = cast(args.pop().expect("two arguments"), DataType::Date32);
            let days = if lower == "date_sub" { -days } else { days };
            cast(cast(date, DataType::Int32) + days, DataType::Date32)
        }
        "datediff" => {
            arity(2)?;
            let start = cast(args.pop().expect("two arguments"), DataType::Date32);
            let end = cast(args.pop().expect("two arguments"), DataType::Date32);
            cast(end, DataType::Int32) - cast(start, DataType::Int32)
        }
        "current_date" => scalar(state, "current_date", args)?,
        // Spark's log of one argument is the natural logarithm (DataFusion's is base 10).
        "log" if args.len() == 1 => scalar(state, "ln", args)?,
        // PySpark always sends a seed; DataFusion's random() takes none (rows differ anyway).
        "rand" | "random" => scalar(state, "random", Vec::new())?,
        "first" | "last" => {
            // first(col, ignorenulls): the flag comes as a literal.
            if args.len() == 2 {
                match args.pop() {
                    Some(Expr::Literal(
                        datafusion::common::ScalarValue::Boolean(Some(false)),
                        _,
                    )) => {}
                    _ => {
                        return Err(unsupported(
                            "function",
                            &format!("{lower}(ignorenulls=True)"),
                        ));
                    }
                }
            }
            let name = if lower == "first" {
                "first_value"
            } else {
                "last_value"
            };
            aggregate(state, name, args, distinct)?
        }
        "locate" | "position" => {
            // locate(substr, str[, pos]): from position 1 only.
            if args.len() != 2 {
                return Err(unsupported("function", "locate with a start position"));
            }
            let text = args.pop().expect("two arguments");
            let needle = args.pop().expect("two arguments");
            scalar(state, "strpos", vec![text, needle])?
        }
        "split" => {
            if args.len() != 2 {
                return Err(unsupported("function", "split with a limit"));
            }
            let pattern = args.pop().expect("two arguments");
            let literal = match &pattern {
                Expr::Literal(v, _) => v.to_string(),
                _ => return Err(unsupported("function", "split by a computed pattern")),
            };
            if literal.chars().any(|c| "\\^$.|?*+()[]{}".contains(c)) {
                return Err(unsupported("function", "split by a regular expression"));
            }
            scalar(state, "string_to_array", vec![args.remove(0), pattern])?
        }
        "nvl2" => {
            arity(3)?;
            let otherwise = args.pop().expect("three arguments");
            let then = args.pop().expect("three arguments");
            when(args.remove(0).is_not_null(), then).otherwise(otherwise)?
        }
        "nanvl" => {
            arity(2)?;
            let other = args.pop().expect("two arguments");
            let value = args.pop().expect("two arguments");
            when(scalar(state, "isnan", vec![value.clone()])?, other).otherwise(value)?
        }
        "count_if" => {
            arity(1)?;
            aggregate(
                state,
                "count",
                vec![when(args.remove(0), lit(1i64)).end()?],
                false,
            )?
        }
        "struct" | "named_struct" => scalar(state, &lower, args)?,
        "explode" | "explode_outer" | "posexplode" | "inline" => {
            return Err(unsupported("function", &lower));
        }
        _ => {
            let target = renamed(&lower).unwrap_or(lower.as_str());
            registered(state, target, args, distinct)
                .ok_or_else(|| unsupported("function", name))??
        }
    })
}

/// Spark's operators as they come from `Column`'s methods.
fn operator(name: &str) -> Option<Operator> {
    Some(match name {
        "+" => Operator::Plus,
        "-" => Operator::Minus,
        "*" => Operator::Multiply,
        "/" => Operator::Divide,
        "%" | "mod" => Operator::Modulo,
        "==" | "=" => Operator::Eq,
        "!=" | "<>" => Operator::NotEq,
        "<=>" | "eqnullsafe" => Operator::IsNotDistinctFrom,
        "<" => Operator::Lt,
        "<=" => Operator::LtEq,
        ">" => Operator::Gt,
        ">=" => Operator::GtEq,
        "and" => Operator::And,
        "or" => Operator::Or,
        "&" | "bitwiseand" => Operator::BitwiseAnd,
        "|" | "bitwiseor" => Operator::BitwiseOr,
        "^" | "bitwisexor" => Operator::BitwiseXor,
        _ => return None,
    })
}

fn binary(op: Operator, args: Vec<Expr>, schema: &DFSchema) -> Result<Expr> {
    let [left, right] = <[Expr; 2]>::try_from(args)
        .map_err(|_| EmberError::User(format!("operator {op} takes two operands")))?;
    if op == Operator::Divide {
        // Spark divides integers as doubles (decimals stay decimals).
        let exact = |e: &Expr| {
            e.get_type(schema)
                .map(|t| matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)))
                .unwrap_or(false)
        };
        if !(exact(&left) || exact(&right)) {
            return Ok(binary_expr(
                cast(left, DataType::Float64),
                op,
                cast(right, DataType::Float64),
            ));
        }
    }
    Ok(binary_expr(left, op, right))
}

/// `when(c1, v1).when(c2, v2).otherwise(e)` arrives as `when(c1, v1, c2, v2, e)`.
fn case_when(args: Vec<Expr>) -> Result<Expr> {
    if args.len() < 2 {
        return Err(EmberError::User(
            "when needs a condition and a value".into(),
        ));
    }
    let mut pairs = args.chunks_exact(2);
    let first = pairs.next().expect("two arguments at least");
    let mut builder = when(first[0].clone(), first[1].clone());
    for pair in pairs.by_ref() {
        builder = builder.when(pair[0].clone(), pair[1].clone());
    }
    Ok(match pairs.remainder() {
        [otherwise] => builder.otherwise(otherwise.clone())?,
        _ => builder.end()?,
    })
}

fn scalar(state: &SessionState, name: &str, args: Vec<Expr>) -> Result<Expr> {
    let udf = state.udf(name).map_err(|_| unsupported("function", name))?;
    Ok(Expr::ScalarFunction(ScalarFunction::new_udf(udf, args)))
}

fn aggregate(state: &SessionState, name: &str, args: Vec<Expr>, distinct: bool) -> Result<Expr> {
    let udaf = state
        .udaf(name)
        .map_err(|_| unsupported("function", name))?;
    Ok(Expr::AggregateFunction(AggregateFunction::new_udf(
        udaf,
        args,
        distinct,
        None,
        vec![],
        None,
    )))
}

/// A function of DataFusion's registry by name: scalar, aggregate, or window.
fn registered(
    state: &SessionState,
    name: &str,
    args: Vec<Expr>,
    distinct: bool,
) -> Option<Result<Expr>> {
    if let Ok(udf) = state.udf(name) {
        return Some(Ok(Expr::ScalarFunction(ScalarFunction::new_udf(udf, args))));
    }
    if state.udaf(name).is_ok() {
        return Some(aggregate(state, name, args, distinct));
    }
    if let Ok(udwf) = state.udwf(name) {
        let udwf: Arc<_> = udwf;
        return Some(Ok(Expr::WindowFunction(Box::new(WindowFunction::new(
            datafusion::logical_expr::expr::WindowFunctionDefinition::WindowUDF(udwf),
            args,
        )))));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::prelude::{SessionContext, col};

    fn schema() -> DFSchema {
        DFSchema::try_from(Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("d", DataType::Decimal128(10, 2), true),
        ]))
        .unwrap()
    }

    #[test]
    fn spark_divides_integers_as_doubles_and_decimals_exactly() {
        let state = SessionContext::new().state();
        let ints = call(&state, "/", vec![col("a"), lit(2)], false, &schema()).unwrap();
        assert_eq!(ints.get_type(&schema()).unwrap(), DataType::Float64);
        let decimals = call(&state, "/", vec![col("d"), lit(2)], false, &schema()).unwrap();
        assert!(matches!(
            decimals.get_type(&schema()).unwrap(),
            DataType::Decimal128(..)
        ));
    }

    #[test]
    fn unknown_functions_are_refused_by_name() {
        let state = SessionContext::new().state();
        let err = call(&state, "no_such_fn", vec![col("a")], false, &schema()).unwrap_err();
        assert!(err.to_string().contains("`no_such_fn`"), "{err}");
        let err = call(&state, "explode", vec![col("a")], false, &schema()).unwrap_err();
        assert!(err.to_string().contains("explode"), "{err}");
    }

    #[test]
    fn spark_names_reach_datafusion_functions() {
        let state = SessionContext::new().state();
        for (name, args) in [
            ("mean", vec![col("a")]),
            ("collect_set", vec![col("a")]),
            ("upper", vec![lit("x")]),
            ("row_number", vec![]),
            ("when", vec![col("a").gt(lit(1)), lit("big"), lit("small")]),
            ("year", vec![lit("2024-01-02")]),
        ] {
            call(&state, name, args, false, &schema()).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
